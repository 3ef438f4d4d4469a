//! The group-commit writer: drains the write queue into one transaction per batch, one savepoint
//! per change, and acknowledges each change only after the transaction committed.

use std::sync::Arc;
use std::time::Instant;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::{dialect, Backend, ShardEpoch, StoreError};
use crate::metrics;
use crate::model::{MenuItem, Merchant, Order, OutboxEvent, Rider};

/// One statement of a change. It has a wire form: in a cluster, changes that touch a
/// merchant's stock are committed by the node that owns the merchant (see `CommitWrites`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Write {
    /// Creates an order row (version must be 1).
    InsertOrder(Arc<Order>),
    /// Replaces an order row whose stored version is `expected_version`.
    UpdateOrder {
        order: Arc<Order>,
        expected_version: i64,
    },
    /// Creates a merchant profile.
    InsertMerchant(Merchant),
    /// Replaces a merchant profile whose stored version is `expected_version`.
    UpdateMerchant {
        merchant: Merchant,
        expected_version: i64,
    },
    /// Creates or replaces a SKU, fenced.
    PutSku {
        merchant_id: String,
        item: MenuItem,
        fence: i64,
    },
    /// Removes a SKU, fenced.
    DeleteSku {
        merchant_id: String,
        sku: String,
        fence: i64,
    },
    /// Adds `delta` (negative to reserve) to a SKU's stock, fenced, never below zero.
    AdjustStock {
        merchant_id: String,
        sku: String,
        delta: i64,
        fence: i64,
    },
    /// Creates a rider.
    InsertRider(Rider),
    /// Replaces a rider whose stored version is `expected_version`.
    UpdateRider { rider: Rider, expected_version: i64 },
    /// Appends to the outbox.
    Event(OutboxEvent),
    /// Records a payment intent (created with the provider).
    InsertPayment(crate::store::PaymentRow),
    /// Moves a payment intent to `status`.
    SetPaymentStatus {
        intent_id: String,
        status: String,
        at: i64,
    },
    /// Records a provider event as applied; a second time is `Duplicate` (callbacks are
    /// delivered at least once, in any order).
    PaymentEvent {
        event_id: String,
        intent_id: String,
        kind: String,
        at: i64,
    },
    /// Records a refund the saga must see through.
    InsertRefund(crate::store::RefundRow),
    /// Moves a refund to `status`.
    SetRefundStatus {
        refund_id: String,
        status: String,
        at: i64,
    },
    /// The simulated payment provider takes an intent and schedules its callbacks
    /// (`(event_id, due_at, body)`); a second time with the same id is `Duplicate`.
    SimIntent {
        intent_id: String,
        order_id: String,
        amount_cents: i64,
        method: String,
        status: String,
        created_at: i64,
        callbacks: Vec<(String, i64, String)>,
    },
    /// The simulated provider takes a refund and schedules its callbacks; a second time with
    /// the same id is `Duplicate`.
    SimRefund {
        refund_id: String,
        intent_id: String,
        order_id: String,
        amount_cents: i64,
        created_at: i64,
        callbacks: Vec<(String, i64, String)>,
    },
    /// The simulated provider's callbacks that the node accepted: removed.
    SimCallbacksDelivered(Vec<i64>),
    /// A simulated provider's callback the node did not accept: tried again at `due_at`.
    SimCallbackRetry { seq: i64, due_at: i64 },
    /// Deletes the outbox rows with `from <= seq < to` written before `before` (only the
    /// shipped ones when `shipped_only`): the retention pruner's step (`store::prune`).
    PruneOutbox {
        from: i64,
        to: i64,
        before: i64,
        shipped_only: bool,
    },
}

impl Write {
    /// Which writer queue the change goes to: its merchant where it has one (an order's and
    /// its SKUs' writes share it, so concurrent writers never lock the same SKU rows), else
    /// its own entity.
    pub fn partition(&self) -> Option<&str> {
        match self {
            Write::InsertOrder(o) => Some(&o.merchant_id),
            Write::UpdateOrder { order, .. } => Some(&order.merchant_id),
            Write::InsertMerchant(m) => Some(&m.id),
            Write::UpdateMerchant { merchant, .. } => Some(&merchant.id),
            Write::PutSku { merchant_id, .. }
            | Write::DeleteSku { merchant_id, .. }
            | Write::AdjustStock { merchant_id, .. } => Some(merchant_id),
            Write::InsertRider(r) => Some(&r.id),
            Write::UpdateRider { rider, .. } => Some(&rider.id),
            Write::Event(_)
            | Write::InsertPayment(_)
            | Write::SetPaymentStatus { .. }
            | Write::PaymentEvent { .. }
            | Write::InsertRefund(_)
            | Write::SetRefundStatus { .. }
            | Write::SimIntent { .. }
            | Write::SimRefund { .. }
            | Write::SimCallbacksDelivered(_)
            | Write::SimCallbackRetry { .. }
            | Write::PruneOutbox { .. } => None,
        }
    }
}

/// The statements both writers run (in `?` form; `dialect` renumbers them for PostgreSQL), so
/// the sqlx path and SQLite's fast path (`sqlite_writer.rs`) cannot drift apart.
pub(super) mod sql {
    /// A versioned order update.
    pub const UPDATE_ORDER: &str =
        "UPDATE orders SET rider_id = ?, status = ?, version = ?, updated_at = ? WHERE id = ? \
         AND version = ?";

    /// A new merchant.
    pub const INSERT_MERCHANT: &str =
        "INSERT INTO merchants (id, name, lat, lng, is_open, version, created_at) VALUES (?, \
         ?, ?, ?, ?, ?, ?)";

    /// A versioned merchant update.
    pub const UPDATE_MERCHANT: &str =
        "UPDATE merchants SET name = ?, lat = ?, lng = ?, is_open = ?, version = ? WHERE id = \
         ? AND version = ?";

    /// A fenced SKU replacement.
    pub const PUT_SKU: &str =
        "UPDATE skus SET name = ?, price_cents = ?, stock = ?, fence = ? WHERE merchant_id = \
         ? AND sku = ? AND fence <= ?";

    /// A new SKU.
    pub const INSERT_SKU: &str =
        "INSERT INTO skus (merchant_id, sku, name, price_cents, stock, fence) VALUES (?, ?, \
         ?, ?, ?, ?)";

    /// A fenced SKU removal.
    pub const DELETE_SKU: &str =
        "DELETE FROM skus WHERE merchant_id = ? AND sku = ? AND fence <= ?";

    /// A fenced stock change that never goes below zero.
    pub const ADJUST_STOCK: &str =
        "UPDATE skus SET stock = stock + ?, fence = ? WHERE merchant_id = ? AND sku = ? AND \
         fence <= ? AND stock + ? >= 0";

    /// A payment intent.
    pub const INSERT_PAYMENT: &str =
        "INSERT INTO payments (intent_id, order_id, amount_cents, method, status, shard, \
         created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";

    /// A payment intent's new status.
    pub const SET_PAYMENT_STATUS: &str =
        "UPDATE payments SET status = ?, updated_at = ? WHERE intent_id = ?";

    /// A provider event, applied once.
    pub const INSERT_PAYMENT_EVENT: &str =
        "INSERT INTO payment_events (event_id, intent_id, kind, received_at) VALUES (?, ?, ?, \
         ?)";

    /// A refund for the saga.
    pub const INSERT_REFUND: &str =
        "INSERT INTO refunds (refund_id, order_id, intent_id, amount_cents, status, attempts, \
         next_attempt_at, shard, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, \
         ?)";

    /// A refund's new status.
    pub const SET_REFUND_STATUS: &str =
        "UPDATE refunds SET status = ?, updated_at = ? WHERE refund_id = ?";

    /// The simulated provider's intent.
    pub const INSERT_SIM_INTENT: &str =
        "INSERT INTO sim_intents (intent_id, order_id, amount_cents, method, status, \
         created_at) VALUES (?, ?, ?, ?, ?, ?)";

    /// The simulated provider's refund.
    pub const INSERT_SIM_REFUND: &str =
        "INSERT INTO sim_refunds (refund_id, intent_id, order_id, amount_cents, status, \
         created_at) VALUES (?, ?, ?, ?, 'succeeded', ?)";

    /// A simulated callback tried again later.
    pub const SIM_CALLBACK_RETRY: &str =
        "UPDATE sim_callbacks SET due_at = ?, attempts = attempts + 1 WHERE seq = ?";

    /// A simulated callback scheduled.
    pub const INSERT_SIM_CALLBACK: &str =
        "INSERT INTO sim_callbacks (event_id, shard, due_at, attempts, body) VALUES (?, ?, ?, \
         0, ?)";
}

/// A queued change and where to send its outcome.
pub(super) struct Job {
    /// The statements, applied all or nothing.
    pub writes: Vec<Write>,
    /// Applied only while this shard is still held under this epoch (cluster writes).
    pub fence: Option<ShardEpoch>,
    /// Receives the outcome after the batch commits (or fails).
    pub reply: oneshot::Sender<Result<(), StoreError>>,
    /// The committing command's trace context: the batch's span links to it.
    pub trace: Option<String>,
}

/// What every writer works with.
#[derive(Clone)]
pub(super) struct Context {
    /// The dialect.
    pub backend: Backend,
    /// Most jobs in one transaction.
    pub batch_max: usize,
    /// Shard count: order and outbox rows are stamped with their entity's shard.
    pub shards: u32,
    /// Woken after a commit that wrote outbox rows.
    pub outbox: std::sync::Arc<tokio::sync::Notify>,
    /// Jobs queued and not yet taken (decremented as batches are taken).
    pub queued: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// Waits for the next item, then takes whatever else is already queued, up to `max` in all.
/// `None` once the queue is closed and empty.
pub(super) async fn take_batch<T>(rx: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Runs until the queue is closed and drained. With `fast` (SQLite on a file), each batch is
/// first tried on the fast writer's own connection; the sqlx path runs only the batches it
/// rolled back, change by change.
pub(super) async fn run(
    pool: AnyPool,
    cx: Context,
    mut rx: mpsc::Receiver<Job>,
    fast: Option<super::sqlite_writer::FastWriter>,
) {
    let mut conn: Option<PoolConnection<Any>> = None;
    loop {
        let Some(batch) = take_batch(&mut rx, cx.batch_max).await else {
            return;
        };
        cx.queued
            .fetch_sub(batch.len() as i64, std::sync::atomic::Ordering::Relaxed);
        metrics::STORE_QUEUE_DEPTH.sub(batch.len() as i64);
        let started = Instant::now();
        let size = batch.len();
        let span = batch_span(&batch);
        let (batch, committed) = match &fast {
            Some(f) => tracing::Instrument::instrument(f.commit(batch), span.clone()).await,
            None => (batch, None),
        };
        let outcomes = match committed {
            Some(allowed) => committed_outcomes(&batch, allowed),
            // After a fast rollback, straight to the per-change path (no second bulk try).
            None => {
                let bulk = fast.is_none();
                tracing::Instrument::instrument(
                    commit_on_kept(&pool, &mut conn, &cx, &batch, bulk),
                    span,
                )
                .await
            }
        };
        metrics::STORE_BATCH_SIZE.observe(size as f64);
        metrics::STORE_BATCH_SECONDS.observe(started.elapsed().as_secs_f64());
        let wrote_events = batch
            .iter()
            .zip(&outcomes)
            .any(|(j, o)| o.is_ok() && j.writes.iter().any(|w| matches!(w, Write::Event(_))));
        if wrote_events {
            cx.outbox.notify_one();
        }
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            if outcome.is_err() {
                metrics::STORE_WRITE_FAILURES.inc();
            }
            let _ = job.reply.send(outcome);
        }
    }
}

/// Commits `batch` through sqlx on the writer's kept connection, taking a fresh one from the
/// pool when there is none. One connection per writer for as long as it works: its page cache
/// (SQLite) and prepared statements stay warm instead of rotating through the pool's
/// connections.
async fn commit_on_kept(
    pool: &AnyPool,
    kept: &mut Option<PoolConnection<Any>>,
    cx: &Context,
    batch: &[Job],
    bulk: bool,
) -> Vec<Result<(), StoreError>> {
    let acquired = match kept.take() {
        Some(c) => Ok(c),
        None => pool.acquire().await,
    };
    match acquired {
        Ok(mut c) => {
            let outcomes = commit_batch(&mut c, cx, batch, bulk).await;
            if !outcomes.iter().any(connection_broken) {
                *kept = Some(c);
            }
            outcomes
        }
        Err(e) => batch
            .iter()
            .map(|_| Err(StoreError::Database(clone_err(&e))))
            .collect(),
    }
}

/// The outcomes of a committed batch: `allowed[i]` false means job `i`'s fence refused it.
fn committed_outcomes(batch: &[Job], allowed: Vec<bool>) -> Vec<Result<(), StoreError>> {
    batch
        .iter()
        .zip(allowed)
        .map(|(j, ok)| if ok { Ok(()) } else { Err(fenced(j)) })
        .collect()
}

/// One span per batch that carries traced commits, linked to each of them (a batch serves many
/// traces, so it is the root of its own).
fn batch_span(batch: &[Job]) -> tracing::Span {
    if batch.iter().all(|j| j.trace.is_none()) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: "waimai::store",
        parent: None,
        "store.batch",
        otel.name = "store batch",
        batch.size = batch.len(),
    );
    for tp in batch.iter().filter_map(|j| j.trace.as_deref()) {
        crate::telemetry::link_to(&span, tp);
    }
    span
}

/// Whether an outcome says the connection itself failed (rather than a change being refused),
/// so the writer should take a fresh one.
fn connection_broken(outcome: &Result<(), StoreError>) -> bool {
    matches!(
        outcome,
        Err(StoreError::Database(e)) if !matches!(e, sqlx::Error::Database(_))
    )
}

/// How often a batch is run again after the database picked it as a deadlock victim.
const DEADLOCK_ATTEMPTS: u32 = 8;

/// Commits a batch; returns one outcome per job.
///
/// Parallel writer transactions (and other nodes' writers) lock rows in whatever order their
/// changes come, so two batches can deadlock, e.g. on the SKU rows of a busy merchant. The
/// database then aborts one of them: PostgreSQL fails one statement, MySQL rolls back the whole
/// transaction. Either way the victim is not any one change's fault, and nothing of the batch has
/// been acknowledged yet, so the whole batch is rolled back and run again.
///
/// `bulk`: try the whole batch in one go first (not when the fast writer just did).
async fn commit_batch(
    conn: &mut AnyConnection,
    cx: &Context,
    batch: &[Job],
    bulk: bool,
) -> Vec<Result<(), StoreError>> {
    let mut attempt = 1;
    loop {
        let retry = attempt < DEADLOCK_ATTEMPTS;
        match try_batch(conn, cx, batch, retry, bulk).await {
            Some(outcomes) => return outcomes,
            None => {
                let pause = rand::random::<u64>() % (5 * u64::from(attempt)) + 1;
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                attempt += 1;
            }
        }
    }
}

/// Whether the database aborted the statement (or transaction) to break a deadlock.
fn is_deadlock(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(db)) => {
            // 40P01: PostgreSQL deadlock_detected; 40001: serialization failure, which is how
            // MySQL/MariaDB report ER_LOCK_DEADLOCK (and PostgreSQL serializable conflicts).
            matches!(db.code().as_deref(), Some("40P01") | Some("40001"))
        }
        _ => false,
    }
}

/// Which jobs of a batch may be applied: a fenced job whose shard has moved to a newer epoch
/// may not. Run first in each transaction; on PostgreSQL and MySQL the `shard_owners` rows
/// are read in share mode, so a claim (which updates them) waits for this transaction to end,
/// and no write of a superseded owner can land after the claim.
async fn check_fences(
    conn: &mut AnyConnection,
    b: Backend,
    batch: &[Job],
) -> Result<Vec<bool>, StoreError> {
    let mut shards: Vec<u32> = batch
        .iter()
        .filter_map(|j| j.fence.map(|f| f.shard))
        .collect();
    if shards.is_empty() {
        return Ok(vec![true; batch.len()]);
    }
    shards.sort_unstable();
    shards.dedup();
    let lock = match b {
        Backend::Postgres => " FOR SHARE",
        Backend::MySql => " LOCK IN SHARE MODE",
        Backend::Sqlite => "",
    };
    let sql = dialect(
        b,
        &format!(
            "SELECT shard, epoch FROM shard_owners WHERE shard IN ({}){lock}",
            vec!["?"; shards.len()].join(", ")
        ),
    );
    let mut q = sqlx::query_as::<_, (i64, i64)>(&sql);
    for s in &shards {
        q = q.bind(i64::from(*s));
    }
    let current: std::collections::HashMap<i64, i64> =
        q.fetch_all(&mut *conn).await?.into_iter().collect();
    Ok(batch
        .iter()
        .map(|j| match j.fence {
            None => true,
            Some(f) => current.get(&i64::from(f.shard)) == Some(&f.epoch),
        })
        .collect())
}

fn fenced(job: &Job) -> StoreError {
    match job.fence {
        Some(f) => StoreError::Fenced {
            shard: f.shard,
            epoch: f.epoch,
        },
        None => StoreError::Closed,
    }
}

/// One attempt at a batch. `None` means it was rolled back as a deadlock victim (only when
/// `retry` is set) and should run again.
async fn try_batch(
    conn: &mut AnyConnection,
    cx: &Context,
    batch: &[Job],
    retry: bool,
    bulk: bool,
) -> Option<Vec<Result<(), StoreError>>> {
    let backend = cx.backend;
    let fail_all = |e: &sqlx::Error| {
        Some(
            batch
                .iter()
                .map(|_| Err(StoreError::Database(clone_err(e))))
                .collect(),
        )
    };
    let single = batch.len() == 1;
    if !single && bulk {
        match try_bulk(conn, cx, batch).await {
            Bulk::Committed(allowed) => return Some(committed_outcomes(batch, allowed)),
            Bulk::Deadlock if retry => return None,
            Bulk::CommitFailed(e) => return fail_all(&e),
            Bulk::Deadlock | Bulk::Fallback => {} // per-change path below finds the culprit
        }
    }
    let mut tx: Transaction<'_, Any> = match conn.begin().await {
        Ok(tx) => tx,
        Err(e) => return fail_all(&e),
    };
    let allowed = match check_fences(&mut tx, backend, batch).await {
        Ok(a) => a,
        Err(e) => {
            let _ = tx.rollback().await;
            if retry && is_deadlock(&e) {
                return None;
            }
            return Some(batch.iter().map(|_| Err(clone_store_err(&e))).collect());
        }
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for (job, allowed) in batch.iter().zip(allowed) {
        if !allowed {
            outcomes.push(Err(fenced(job)));
            continue;
        }
        if !single {
            if let Err(e) = tx.execute("SAVEPOINT w").await {
                return fail_all(&e);
            }
        }
        let outcome = apply(&mut tx, cx, &job.writes).await;
        if retry && matches!(&outcome, Err(e) if is_deadlock(e)) {
            let _ = tx.rollback().await;
            return None;
        }
        if !single {
            let sql = if outcome.is_ok() {
                "RELEASE SAVEPOINT w"
            } else {
                "ROLLBACK TO SAVEPOINT w"
            };
            if let Err(e) = tx.execute(sql).await {
                return fail_all(&e);
            }
        }
        outcomes.push(outcome);
    }
    if single && outcomes.iter().any(|o| o.is_err()) {
        let _ = tx.rollback().await;
        return Some(outcomes);
    }
    match tx.commit().await {
        Ok(()) => Some(outcomes),
        Err(e) => fail_all(&e),
    }
}

/// How the optimistic bulk attempt at a batch ended.
enum Bulk {
    /// Every change of the batch that its fence allowed is committed (`false`: fenced, not
    /// applied).
    Committed(Vec<bool>),
    /// Something failed and everything was rolled back: run the per-change path.
    Fallback,
    /// The database chose this transaction as a deadlock victim; rolled back.
    Deadlock,
    /// COMMIT itself failed.
    CommitFailed(sqlx::Error),
}

/// Row counts multi-row inserts are cut into, so each table has a handful of statement shapes
/// in the prepared-statement cache rather than one per batch size.
const CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// Cuts `n` rows into `CHUNKS`-sized pieces, largest first.
pub(super) fn chunk_sizes(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for c in CHUNKS {
        while n >= c {
            out.push(c);
            n -= c;
        }
    }
    out
}

/// `INSERT INTO {head} VALUES (?, ..), (?, ..)` with `rows` tuples of `cols` placeholders.
fn multi_insert(b: Backend, head: &str, cols: usize, rows: usize) -> String {
    let tuple = format!("({})", vec!["?"; cols].join(", "));
    dialect(
        b,
        &format!("INSERT INTO {head} VALUES {}", vec![tuple; rows].join(", ")),
    )
}

/// The optimistic first attempt at a batch of several changes: one transaction without
/// savepoints, order and outbox inserts as multi-row statements, stock adjustments summed per
/// (merchant, SKU, fence) and applied in ascending fence order. The batch is atomic, so any
/// order of its changes is a valid serialisation; the per-row guards (`fence <= ?`,
/// `stock + ? >= 0`, primary keys, versions) still hold for the sum. If anything fails, the
/// whole attempt is rolled back and the batch goes through the per-change path, which reports
/// exactly which change failed.
async fn try_bulk(conn: &mut AnyConnection, cx: &Context, batch: &[Job]) -> Bulk {
    let backend = cx.backend;
    let mut tx: Transaction<'_, Any> = match conn.begin().await {
        Ok(tx) => tx,
        Err(_) => return Bulk::Fallback,
    };
    let failed = |e: &StoreError| {
        if is_deadlock(e) {
            Bulk::Deadlock
        } else {
            Bulk::Fallback
        }
    };
    let allowed = match check_fences(&mut tx, backend, batch).await {
        Ok(a) => a,
        Err(e) => {
            let _ = tx.rollback().await;
            return failed(&e);
        }
    };
    let mut orders: Vec<&Order> = Vec::new();
    let mut events: Vec<&OutboxEvent> = Vec::new();
    let mut stock: std::collections::BTreeMap<(&str, &str, i64), i64> = Default::default();
    for (job, _) in batch.iter().zip(&allowed).filter(|(_, ok)| **ok) {
        for w in &job.writes {
            match w {
                Write::InsertOrder(o) => orders.push(o),
                Write::Event(e) => events.push(e),
                Write::AdjustStock {
                    merchant_id,
                    sku,
                    delta,
                    fence,
                } => *stock.entry((merchant_id, sku, *fence)).or_default() += delta,
                other => {
                    if let Err(e) = apply_one(&mut tx, cx, other).await {
                        let _ = tx.rollback().await;
                        return failed(&e);
                    }
                }
            }
        }
    }
    if let Err(e) = bulk_orders(&mut tx, cx, &orders).await {
        let _ = tx.rollback().await;
        return failed(&e);
    }
    let stock: Vec<StockDelta<'_>> = stock
        .into_iter()
        .map(|((merchant_id, sku, fence), delta)| StockDelta {
            merchant_id,
            sku,
            delta,
            fence,
        })
        .collect();
    match bulk_stock(&mut tx, backend, &stock).await {
        Ok(true) => {}
        Ok(false) => {
            let _ = tx.rollback().await;
            return Bulk::Fallback;
        }
        Err(e) => {
            let _ = tx.rollback().await;
            return failed(&e);
        }
    }
    if let Err(e) = bulk_events(&mut tx, cx, &events).await {
        let _ = tx.rollback().await;
        return failed(&e);
    }
    match tx.commit().await {
        Ok(()) => Bulk::Committed(allowed),
        Err(e) => Bulk::CommitFailed(e),
    }
}

/// A batch's summed stock change to one SKU under one fence.
struct StockDelta<'a> {
    merchant_id: &'a str,
    sku: &'a str,
    delta: i64,
    fence: i64,
}

/// Applies summed stock changes, each guarded like `Write::AdjustStock` (`fence <= f`,
/// `stock + d >= 0`). On SQLite and PostgreSQL, when every SKU appears once, it is one
/// `UPDATE .. FROM (VALUES ..)` per chunk instead of a statement per SKU (a batch of a few
/// hundred orders touches a hundred SKUs or more). `Ok(false)`: some row did not match its
/// guard; the caller rolls back and lets the per-change path say which change failed.
async fn bulk_stock(
    conn: &mut AnyConnection,
    b: Backend,
    rows: &[StockDelta<'_>],
) -> Result<bool, StoreError> {
    let unique_skus = rows
        .windows(2)
        .all(|w| (w[0].merchant_id, w[0].sku) != (w[1].merchant_id, w[1].sku));
    if b == Backend::MySql || !unique_skus {
        // MySQL has no UPDATE .. FROM VALUES (and counts only changed rows); a SKU under two
        // fences needs them applied in order. Both are rare or slower anyway: one at a time.
        for r in rows {
            match adjust_stock(conn, b, r.merchant_id, r.sku, r.delta, r.fence).await {
                Ok(()) => {}
                Err(StoreError::StaleFence { .. } | StoreError::InsufficientStock { .. }) => {
                    return Ok(false)
                }
                Err(e) => return Err(e),
            }
        }
        return Ok(true);
    }
    let mut rest = rows;
    for n in chunk_sizes(rows.len()) {
        let (now, later) = rest.split_at(n);
        rest = later;
        let sql = stock_update(b, n);
        let mut q = sqlx::query(&sql);
        for r in now {
            q = q
                .bind(r.merchant_id)
                .bind(r.sku)
                .bind(r.delta)
                .bind(r.fence);
        }
        let done = q.execute(&mut *conn).await?;
        if done.rows_affected() != n as u64 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `UPDATE skus .. FROM (VALUES ..)` for `rows` (merchant, sku, delta, fence) tuples.
fn stock_update(b: Backend, rows: usize) -> String {
    let (tuple, alias, m, s, d, f) = if b == Backend::Postgres {
        (
            "(?::text, ?::text, ?::bigint, ?::bigint)",
            "v (m, s, d, f)",
            "v.m",
            "v.s",
            "v.d",
            "v.f",
        )
    } else {
        (
            "(?, ?, ?, ?)",
            "v",
            "v.column1",
            "v.column2",
            "v.column3",
            "v.column4",
        )
    };
    dialect(
        b,
        &format!(
            "UPDATE skus SET stock = skus.stock + {d}, fence = {f} FROM (VALUES {}) AS {alias} \
             WHERE skus.merchant_id = {m} AND skus.sku = {s} AND skus.fence <= {f} \
             AND skus.stock + {d} >= 0",
            vec![tuple; rows].join(", ")
        ),
    )
}

/// Inserts orders as multi-row statements. Orders with and without a pickup point go in
/// separate statements: a missing pickup is written as literal NULLs (see `coord`).
async fn bulk_orders(
    conn: &mut AnyConnection,
    cx: &Context,
    orders: &[&Order],
) -> Result<(), StoreError> {
    let (with, without): (Vec<&Order>, Vec<&Order>) =
        orders.iter().partition(|o| o.pickup.is_some());
    insert_orders(conn, cx, &with, true).await?;
    insert_orders(conn, cx, &without, false).await
}

async fn insert_orders(
    conn: &mut AnyConnection,
    cx: &Context,
    orders: &[&Order],
    pickup: bool,
) -> Result<(), StoreError> {
    let b = cx.backend;
    let mut rest = orders;
    for n in chunk_sizes(orders.len()) {
        let (now, later) = rest.split_at(n);
        rest = later;
        let p = if pickup { "?" } else { "NULL" };
        let tuple = format!("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {p}, {p})");
        let sql = dialect(
            b,
            &format!(
                "INSERT INTO orders (id, customer_id, merchant_id, rider_id, status, items, \
                 total_cents, deliver_lat, deliver_lng, request_hash, version, created_at, \
                 updated_at, shard, pickup_lat, pickup_lng) VALUES {}",
                vec![tuple; n].join(", ")
            ),
        );
        let mut q = sqlx::query(&sql);
        for o in now {
            let items =
                serde_json::to_string(&o.items).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            q = q
                .bind(&o.id)
                .bind(&o.customer_id)
                .bind(&o.merchant_id)
                .bind(&o.rider_id)
                .bind(o.status.as_str())
                .bind(items)
                .bind(o.total_cents)
                .bind(o.deliver_to.lat)
                .bind(o.deliver_to.lng)
                .bind(&o.request_hash)
                .bind(o.version)
                .bind(o.created_at)
                .bind(o.updated_at)
                .bind(i64::from(crate::cluster::shard_of(&o.id, cx.shards)));
            if let Some(l) = o.pickup {
                q = q.bind(l.lat).bind(l.lng);
            }
        }
        let what = match now {
            [one] => format!("order {}", one.id),
            _ => "order".to_string(),
        };
        q.execute(&mut *conn).await.map_err(|e| unique(e, what))?;
    }
    Ok(())
}

async fn bulk_events(
    conn: &mut AnyConnection,
    cx: &Context,
    events: &[&OutboxEvent],
) -> Result<(), StoreError> {
    let mut rest = events;
    for n in chunk_sizes(events.len()) {
        let (now, later) = rest.split_at(n);
        rest = later;
        let sql = multi_insert(
            cx.backend,
            "outbox (aggregate_type, aggregate_id, event_type, payload, created_at, shard, \
             traceparent)",
            7,
            n,
        );
        let mut q = sqlx::query(&sql);
        for ev in now {
            q = q
                .bind(&ev.aggregate_type)
                .bind(&ev.aggregate_id)
                .bind(&ev.event_type)
                .bind(ev.payload.as_str())
                .bind(ev.created_at)
                .bind(i64::from(crate::cluster::shard_of(
                    &ev.aggregate_id,
                    cx.shards,
                )))
                .bind(&ev.traceparent);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `sqlx::Error` is not `Clone`; keep the message.
fn clone_err(e: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Protocol(e.to_string())
}

/// A copy of a store error for every job of a failed batch.
fn clone_store_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Database(db) => StoreError::Database(clone_err(db)),
        other => StoreError::Corrupt(other.to_string()),
    }
}

async fn apply(conn: &mut AnyConnection, cx: &Context, writes: &[Write]) -> Result<(), StoreError> {
    for w in writes {
        apply_one(conn, cx, w).await?;
    }
    Ok(())
}

fn unique(e: sqlx::Error, what: impl Into<String>) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Duplicate(what.into()),
        _ => StoreError::Database(e),
    }
}

async fn apply_one(conn: &mut AnyConnection, cx: &Context, w: &Write) -> Result<(), StoreError> {
    let b = cx.backend;
    match w {
        Write::InsertOrder(o) => bulk_orders(conn, cx, &[o]).await?,
        Write::UpdateOrder {
            order: o,
            expected_version,
        } => {
            let sql = dialect(b, sql::UPDATE_ORDER);
            let done = sqlx::query(&sql)
                .bind(&o.rider_id)
                .bind(o.status.as_str())
                .bind(o.version)
                .bind(o.updated_at)
                .bind(&o.id)
                .bind(*expected_version)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::VersionConflict {
                    kind: "order",
                    id: o.id.clone(),
                });
            }
        }
        Write::InsertMerchant(m) => {
            let sql = dialect(b, sql::INSERT_MERCHANT);
            sqlx::query(&sql)
                .bind(&m.id)
                .bind(&m.name)
                .bind(m.location.lat)
                .bind(m.location.lng)
                .bind(m.open as i64)
                .bind(m.version)
                .bind(crate::domain::now_ms())
                .execute(&mut *conn)
                .await
                .map_err(|e| unique(e, format!("merchant {}", m.id)))?;
        }
        Write::UpdateMerchant {
            merchant: m,
            expected_version,
        } => {
            let sql = dialect(b, sql::UPDATE_MERCHANT);
            let done = sqlx::query(&sql)
                .bind(&m.name)
                .bind(m.location.lat)
                .bind(m.location.lng)
                .bind(m.open as i64)
                .bind(m.version)
                .bind(&m.id)
                .bind(*expected_version)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::VersionConflict {
                    kind: "merchant",
                    id: m.id.clone(),
                });
            }
        }
        Write::PutSku {
            merchant_id,
            item,
            fence,
        } => {
            let sql = dialect(b, sql::PUT_SKU);
            let done = sqlx::query(&sql)
                .bind(&item.name)
                .bind(item.price_cents)
                .bind(item.stock)
                .bind(*fence)
                .bind(merchant_id)
                .bind(&item.sku)
                .bind(*fence)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                if sku_fence(conn, b, merchant_id, &item.sku).await?.is_some() {
                    return Err(StoreError::StaleFence {
                        merchant_id: merchant_id.clone(),
                        sku: item.sku.clone(),
                        token: *fence,
                    });
                }
                let sql = dialect(b, sql::INSERT_SKU);
                sqlx::query(&sql)
                    .bind(merchant_id)
                    .bind(&item.sku)
                    .bind(&item.name)
                    .bind(item.price_cents)
                    .bind(item.stock)
                    .bind(*fence)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| unique(e, format!("sku {merchant_id}/{}", item.sku)))?;
            }
        }
        Write::DeleteSku {
            merchant_id,
            sku,
            fence,
        } => {
            let sql = dialect(b, sql::DELETE_SKU);
            let done = sqlx::query(&sql)
                .bind(merchant_id)
                .bind(sku)
                .bind(*fence)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 && sku_fence(conn, b, merchant_id, sku).await?.is_some() {
                return Err(StoreError::StaleFence {
                    merchant_id: merchant_id.clone(),
                    sku: sku.clone(),
                    token: *fence,
                });
            }
        }
        Write::AdjustStock {
            merchant_id,
            sku,
            delta,
            fence,
        } => adjust_stock(conn, b, merchant_id, sku, *delta, *fence).await?,
        Write::InsertRider(r) => {
            let c = coord(r.location);
            let sql = dialect(
                b,
                &format!(
                    "INSERT INTO riders (id, name, online, lat, lng, current_order, version, \
                     created_at) VALUES (?, ?, ?, {c}, {c}, ?, ?, ?)"
                ),
            );
            let mut q = sqlx::query(&sql)
                .bind(&r.id)
                .bind(&r.name)
                .bind(r.online as i64);
            if let Some(l) = r.location {
                q = q.bind(l.lat).bind(l.lng);
            }
            q.bind(&r.current_order)
                .bind(r.version)
                .bind(crate::domain::now_ms())
                .execute(&mut *conn)
                .await
                .map_err(|e| unique(e, format!("rider {}", r.id)))?;
        }
        Write::UpdateRider {
            rider: r,
            expected_version,
        } => {
            let c = coord(r.location);
            let sql = dialect(
                b,
                &format!(
                    "UPDATE riders SET name = ?, online = ?, lat = {c}, lng = {c}, \
                     current_order = ?, version = ? WHERE id = ? AND version = ?"
                ),
            );
            let mut q = sqlx::query(&sql).bind(&r.name).bind(r.online as i64);
            if let Some(l) = r.location {
                q = q.bind(l.lat).bind(l.lng);
            }
            let done = q
                .bind(&r.current_order)
                .bind(r.version)
                .bind(&r.id)
                .bind(*expected_version)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::VersionConflict {
                    kind: "rider",
                    id: r.id.clone(),
                });
            }
        }
        Write::Event(ev) => bulk_events(conn, cx, &[ev]).await?,
        Write::InsertPayment(p) => {
            let sql = dialect(b, sql::INSERT_PAYMENT);
            sqlx::query(&sql)
                .bind(&p.intent_id)
                .bind(&p.order_id)
                .bind(p.amount_cents)
                .bind(&p.method)
                .bind(&p.status)
                .bind(i64::from(crate::cluster::shard_of(&p.order_id, cx.shards)))
                .bind(p.created_at)
                .bind(p.updated_at)
                .execute(&mut *conn)
                .await
                .map_err(|e| unique(e, format!("payment {}", p.intent_id)))?;
        }
        Write::SetPaymentStatus {
            intent_id,
            status,
            at,
        } => {
            let sql = dialect(b, sql::SET_PAYMENT_STATUS);
            sqlx::query(&sql)
                .bind(status)
                .bind(*at)
                .bind(intent_id)
                .execute(&mut *conn)
                .await?;
        }
        Write::PaymentEvent {
            event_id,
            intent_id,
            kind,
            at,
        } => {
            let sql = dialect(b, sql::INSERT_PAYMENT_EVENT);
            sqlx::query(&sql)
                .bind(event_id)
                .bind(intent_id)
                .bind(kind)
                .bind(*at)
                .execute(&mut *conn)
                .await
                .map_err(|e| unique(e, format!("payment event {event_id}")))?;
        }
        Write::InsertRefund(r) => {
            let sql = dialect(b, sql::INSERT_REFUND);
            sqlx::query(&sql)
                .bind(&r.refund_id)
                .bind(&r.order_id)
                .bind(&r.intent_id)
                .bind(r.amount_cents)
                .bind(&r.status)
                .bind(r.attempts)
                .bind(r.next_attempt_at)
                .bind(i64::from(crate::cluster::shard_of(&r.order_id, cx.shards)))
                .bind(r.created_at)
                .bind(r.updated_at)
                .execute(&mut *conn)
                .await
                .map_err(|e| unique(e, format!("refund {}", r.refund_id)))?;
        }
        Write::SetRefundStatus {
            refund_id,
            status,
            at,
        } => {
            let sql = dialect(b, sql::SET_REFUND_STATUS);
            sqlx::query(&sql)
                .bind(status)
                .bind(*at)
                .bind(refund_id)
                .execute(&mut *conn)
                .await?;
        }
        Write::SimIntent {
            intent_id,
            order_id,
            amount_cents,
            method,
            status,
            created_at,
            callbacks,
        } => {
            let sql = dialect(b, sql::INSERT_SIM_INTENT);
            sqlx::query(&sql)
                .bind(intent_id)
                .bind(order_id)
                .bind(*amount_cents)
                .bind(method)
                .bind(status)
                .bind(*created_at)
                .execute(&mut *conn)
                .await
                .map_err(|e| unique(e, format!("simulated intent {intent_id}")))?;
            sim_schedule(conn, cx, order_id, callbacks).await?;
        }
        Write::SimRefund {
            refund_id,
            intent_id,
            order_id,
            amount_cents,
            created_at,
            callbacks,
        } => {
            let sql = dialect(b, sql::INSERT_SIM_REFUND);
            sqlx::query(&sql)
                .bind(refund_id)
                .bind(intent_id)
                .bind(order_id)
                .bind(*amount_cents)
                .bind(*created_at)
                .execute(&mut *conn)
                .await
                .map_err(|e| unique(e, format!("simulated refund {refund_id}")))?;
            sim_schedule(conn, cx, order_id, callbacks).await?;
        }
        Write::SimCallbackRetry { seq, due_at } => {
            let sql = dialect(b, sql::SIM_CALLBACK_RETRY);
            sqlx::query(&sql)
                .bind(*due_at)
                .bind(*seq)
                .execute(&mut *conn)
                .await?;
        }
        Write::SimCallbacksDelivered(seqs) => {
            for chunk in seqs.chunks(500) {
                let sql = dialect(
                    b,
                    &format!(
                        "DELETE FROM sim_callbacks WHERE seq IN ({})",
                        super::marks(chunk.len())
                    ),
                );
                let mut q = sqlx::query(&sql);
                for seq in chunk {
                    q = q.bind(*seq);
                }
                q.execute(&mut *conn).await?;
            }
        }
        Write::PruneOutbox {
            from,
            to,
            before,
            shipped_only,
        } => {
            // A range of the primary key: bounded work whatever the outbox holds. Counted by the
            // pruner once committed (this attempt may yet be rolled back and replayed).
            let sql = dialect(
                b,
                &format!(
                    "DELETE FROM outbox WHERE {}",
                    super::prune::prunable(*shipped_only)
                ),
            );
            sqlx::query(&sql)
                .bind(*from)
                .bind(*to)
                .bind(*before)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Schedules the simulated provider's callbacks `(event_id, due_at, body)` for `order_id` (an
/// intent's or a refund's), stamped with the order's shard.
async fn sim_schedule(
    conn: &mut AnyConnection,
    cx: &Context,
    order_id: &str,
    callbacks: &[(String, i64, String)],
) -> Result<(), StoreError> {
    let shard = crate::cluster::shard_of(order_id, cx.shards);
    let sql = dialect(cx.backend, sql::INSERT_SIM_CALLBACK);
    for (event_id, due, body) in callbacks {
        sqlx::query(&sql)
            .bind(event_id)
            .bind(i64::from(shard))
            .bind(*due)
            .bind(body)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Adds `delta` to a SKU's stock under fence `fence`, never below zero.
async fn adjust_stock(
    conn: &mut AnyConnection,
    b: Backend,
    merchant_id: &str,
    sku: &str,
    delta: i64,
    fence: i64,
) -> Result<(), StoreError> {
    let sql = dialect(b, sql::ADJUST_STOCK);
    let done = sqlx::query(&sql)
        .bind(delta)
        .bind(fence)
        .bind(merchant_id)
        .bind(sku)
        .bind(fence)
        .bind(delta)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(match sku_fence(conn, b, merchant_id, sku).await? {
            Some(stored) if stored > fence => StoreError::StaleFence {
                merchant_id: merchant_id.to_string(),
                sku: sku.to_string(),
                token: fence,
            },
            _ => StoreError::InsufficientStock {
                merchant_id: merchant_id.to_string(),
                sku: sku.to_string(),
            },
        });
    }
    Ok(())
}

/// The SQL for one coordinate of an optional location: a placeholder, or a literal `NULL`.
///
/// sqlx's `Any` driver binds a NULL `f64` as a `float4` on PostgreSQL, and the connection caches
/// the statement with that parameter type, after which a real `f64` in the same statement fails
/// ("incorrect binary data format"). Writing a missing location as literal NULLs keeps NULL and
/// non-NULL coordinates in different statements.
fn coord(location: Option<crate::domain::Location>) -> &'static str {
    if location.is_some() {
        "?"
    } else {
        "NULL"
    }
}

async fn sku_fence(
    conn: &mut AnyConnection,
    b: Backend,
    merchant_id: &str,
    sku: &str,
) -> Result<Option<i64>, StoreError> {
    let sql = dialect(
        b,
        "SELECT fence FROM skus WHERE merchant_id = ? AND sku = ?",
    );
    let row: Option<(i64,)> = sqlx::query_as(&sql)
        .bind(merchant_id)
        .bind(sku)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_with_few_shapes() {
        for n in 0..300 {
            let parts = chunk_sizes(n);
            assert_eq!(parts.iter().sum::<usize>(), n);
            assert!(parts.iter().all(|p| CHUNKS.contains(p)));
            assert!(parts.windows(2).all(|w| w[0] >= w[1]), "largest first");
        }
        assert_eq!(chunk_sizes(85), [64, 16, 4, 1]);
    }

    #[test]
    fn multi_row_inserts_number_postgres_placeholders_across_rows() {
        let sql = multi_insert(Backend::Postgres, "t (a, b)", 2, 2);
        assert_eq!(sql, "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)");
        let sql = multi_insert(Backend::Sqlite, "t (a, b)", 2, 2);
        assert_eq!(sql, "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)");
    }
}
