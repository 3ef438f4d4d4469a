//! The SQLite writer's fast path: a thread of its own holding one rusqlite connection that runs
//! a whole batch (BEGIN IMMEDIATE, every change through a cached prepared statement, COMMIT)
//! without leaving the thread.
//!
//! Through sqlx, each statement of a batch was a round trip between the store's thread and the
//! connection's worker thread: about ten per batch of nine orders. Here a batch costs one round
//! trip (in `lifecycle`, +19% whole orders/s and -16% node CPU per order; see BENCHMARKS.md).
//!
//! It is only the optimistic attempt. If anything in it fails (a version conflict, a guard on
//! stock or fence, a duplicate key, a busy database), it is rolled back, nothing of it has been
//! acknowledged, and the writer runs the batch through sqlx's per-change path (`writer.rs`),
//! which says exactly which change failed and why. So errors are reported by one piece of code
//! on every backend, and this one only has to know how to apply a change that succeeds.
//!
//! Checkpoints run beside it, on a thread of their own (`waimai-ckpt`, `start_checkpointer`):
//! every 50 ms a PASSIVE checkpoint, on its own connection, copies what the WAL holds into the
//! database file. SQLite's automatic checkpoint ran inside the fast writer's COMMIT every 4,000
//! pages, and while it copied and synced, every batch waited: at 6,000 creates/s that was about
//! seven batches a second over 10 ms, and a p90 of 19-28 ms instead of 4-7 ms (BENCHMARKS.md).
//! The writer's own automatic checkpoint stays, at 40,000 pages (`BACKSTOP_AUTOCHECKPOINT`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::writer::{sql, Job, Write};
use crate::model::{Order, OutboxEvent};

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// The fast writer's own automatic checkpoint, in pages (`SQLITE_PRAGMAS` sets 4,000 for every
/// connection). A backstop for a checkpointer that fell behind, and more: the WAL is rewound
/// only when a write transaction begins with every page of it copied, and under steady writes
/// only a checkpoint run right after the writer's own COMMIT gets there. Off (0), one 15 s run
/// left a WAL of 1.14 GB; at 40,000 the WAL file stays near 160 MB.
const BACKSTOP_AUTOCHECKPOINT: &str = "PRAGMA wal_autocheckpoint = 40000";

/// What the thread answers: the jobs back, and `Some(allowed)` when the batch committed
/// (`false`: fenced, not applied), `None` when it was rolled back for the per-change path.
type Answer = (Vec<Job>, Option<Vec<bool>>);

/// A batch and where to answer.
type Request = (Vec<Job>, oneshot::Sender<Answer>);

/// The handle the writer keeps; the thread ends when it is dropped.
pub(super) struct FastWriter {
    requests: std::sync::mpsc::Sender<Request>,
    counts: Arc<FastCounts>,
}

/// How many batches a store's fast writer committed and rolled back (see
/// `Store::fast_batches`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FastBatches {
    /// Committed in one go.
    pub committed: u64,
    /// Rolled back and replayed change by change through sqlx.
    pub rolled_back: u64,
}

/// The fast writer's counts (and its checkpointer's): its own, and the process-wide metrics'.
pub(super) struct FastCounts {
    committed: AtomicU64,
    rolled_back: AtomicU64,
    checkpointed: AtomicU64,
    committed_metric: IntCounter,
    rolled_back_metric: IntCounter,
}

impl FastCounts {
    fn new() -> FastCounts {
        let metric = |outcome| {
            crate::metrics::STORE_FAST_BATCHES
                .with_label_values(&[outcome])
                .clone()
        };
        FastCounts {
            committed: AtomicU64::new(0),
            rolled_back: AtomicU64::new(0),
            checkpointed: AtomicU64::new(0),
            committed_metric: metric("committed"),
            rolled_back_metric: metric("rolled_back"),
        }
    }

    fn count(&self, committed: bool) {
        if committed {
            self.committed.fetch_add(1, Ordering::Relaxed);
            self.committed_metric.inc();
        } else {
            self.rolled_back.fetch_add(1, Ordering::Relaxed);
            self.rolled_back_metric.inc();
        }
    }

    fn checkpointed(&self) {
        self.checkpointed.fetch_add(1, Ordering::Relaxed);
        crate::metrics::STORE_WAL_CHECKPOINTS.inc();
    }

    /// Checkpoints so far that copied pages into the database file.
    pub(super) fn checkpoints(&self) -> u64 {
        self.checkpointed.load(Ordering::Relaxed)
    }

    /// The counts so far.
    pub(super) fn get(&self) -> FastBatches {
        FastBatches {
            committed: self.committed.load(Ordering::Relaxed),
            rolled_back: self.rolled_back.load(Ordering::Relaxed),
        }
    }
}

impl FastWriter {
    /// Opens the database file at `path` (which the pool already has open) on a new thread,
    /// and the checkpointer on another. `None` when it cannot be opened; the writer then uses
    /// sqlx alone.
    pub fn start(path: &str, shards: u32) -> Option<FastWriter> {
        let conn = match open(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path, error = %e, "SQLite fast writer unavailable; using sqlx");
                return None;
            }
        };
        let (requests, rx) = std::sync::mpsc::channel::<Request>();
        let counts = Arc::new(FastCounts::new());
        // The checkpointer runs as long as the writer's thread holds `alive`; it stops as soon
        // as the thread ends (or is never spawned) and drops it.
        let (alive, stop) = std::sync::mpsc::channel::<()>();
        match start_checkpointer(path, stop, counts.clone()) {
            Ok(()) => {
                if let Err(e) = conn.execute_batch(BACKSTOP_AUTOCHECKPOINT) {
                    tracing::warn!(path, error = %e, "writer checkpoints at 4,000 pages");
                }
            }
            Err(e) => {
                tracing::warn!(path, error = %e, "no SQLite checkpointer; the writer checkpoints")
            }
        }
        let counted = counts.clone();
        let spawned = std::thread::Builder::new()
            .name("waimai-sqlite".into())
            .spawn(move || {
                let _alive = alive;
                let mut conn = conn;
                while let Ok((batch, reply)) = rx.recv() {
                    let outcome = commit(&mut conn, shards, &batch);
                    counted.count(outcome.is_some());
                    let _ = reply.send((batch, outcome));
                }
            });
        match spawned {
            Ok(_) => Some(FastWriter { requests, counts }),
            Err(e) => {
                tracing::warn!(error = %e, "SQLite fast writer thread; using sqlx");
                None
            }
        }
    }

    /// Its counts, shared with the thread.
    pub fn counts(&self) -> Arc<FastCounts> {
        self.counts.clone()
    }

    /// Runs `batch` on the thread. The jobs always come back, unless the thread is gone, in
    /// which case their callers see the store as closed.
    pub async fn commit(&self, batch: Vec<Job>) -> Answer {
        let (tx, rx) = oneshot::channel();
        if let Err(std::sync::mpsc::SendError((batch, _))) = self.requests.send((batch, tx)) {
            return (batch, None);
        }
        // The thread gone mid-batch took the jobs with it: nothing to answer here.
        rx.await.unwrap_or_default()
    }
}

/// Starts the checkpointer thread on a connection of its own: a PASSIVE checkpoint every
/// `CHECKPOINT_EVERY` (it never waits for the writer or for readers; what a reader still needs
/// is copied at a later round), until `stop`'s sender is dropped.
fn start_checkpointer(
    path: &str,
    stop: std::sync::mpsc::Receiver<()>,
    counts: Arc<FastCounts>,
) -> Result<(), String> {
    let conn = open(path).map_err(|e| e.to_string())?;
    // Never checkpoints on its own account: it writes nothing.
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
        .map_err(|e| e.to_string())?;
    let spawned = std::thread::Builder::new()
        .name("waimai-ckpt".into())
        .spawn(move || {
            use std::sync::mpsc::RecvTimeoutError;
            // What the previous round saw: (frames in the WAL, frames copied from it).
            let mut seen = (0_i64, 0_i64);
            while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
                let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                });
                match done {
                    // Both restart at zero when the writer rewinds the WAL.
                    Ok(now) => {
                        let rewound = now.0 < seen.0;
                        if now.1 > 0 && (now.1 > seen.1 || rewound) {
                            counts.checkpointed();
                        }
                        seen = now;
                    }
                    Err(e) => tracing::debug!(error = %e, "SQLite checkpoint failed; next round"),
                }
            }
        });
    spawned
        .map(|_| ())
        .map_err(|e| format!("checkpointer thread: {e}"))
}

/// Opens the file with the settings of the pool's connections (`SQLITE_PRAGMAS`).
fn open(path: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        // No CREATE: the file exists, the pool made it.
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    for pragma in super::SQLITE_PRAGMAS {
        conn.execute_batch(pragma)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// One attempt at the batch; `None` if it was rolled back. `BEGIN`, `COMMIT` and `ROLLBACK` go
/// through the statement cache like the writes: `execute_batch` compiled them again for every
/// batch (about 2,300 instructions each, 2% of the node's instructions per whole order at
/// `lifecycle --rate 10`, `scripts/instr-per-order`).
fn commit(conn: &mut Connection, shards: u32, batch: &[Job]) -> Option<Vec<bool>> {
    if let Err(e) = run(conn, "BEGIN IMMEDIATE", &[]) {
        tracing::debug!(error = %e, "fast SQLite batch not begun; per-change path");
        return None;
    }
    let applied = fences(conn, batch).and_then(|allowed| {
        for (job, _) in batch.iter().zip(&allowed).filter(|(_, ok)| **ok) {
            for w in &job.writes {
                if !apply(conn, shards, w)? {
                    return Ok(None);
                }
            }
        }
        Ok(Some(allowed))
    });
    match applied {
        Ok(Some(allowed)) if run(conn, "COMMIT", &[]).is_ok() => Some(allowed),
        Ok(_) => {
            let _ = run(conn, "ROLLBACK", &[]);
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "fast SQLite batch rolled back; per-change path");
            let _ = run(conn, "ROLLBACK", &[]);
            None
        }
    }
}

/// Which jobs their shard's current epoch allows (see `writer::check_fences`).
fn fences(conn: &Connection, batch: &[Job]) -> rusqlite::Result<Vec<bool>> {
    let mut epochs: HashMap<u32, Option<i64>> = HashMap::new();
    let mut allowed = Vec::with_capacity(batch.len());
    for job in batch {
        let Some(f) = job.fence else {
            allowed.push(true);
            continue;
        };
        let current = match epochs.get(&f.shard) {
            Some(e) => *e,
            None => {
                let e = conn
                    .prepare_cached("SELECT epoch FROM shard_owners WHERE shard = ?")?
                    .query_row([i64::from(f.shard)], |r| r.get::<_, i64>(0))
                    .optional()?;
                epochs.insert(f.shard, e);
                e
            }
        };
        allowed.push(current == Some(f.epoch));
    }
    Ok(allowed)
}

/// Runs one statement through the connection's statement cache; the number of rows changed.
fn run(conn: &Connection, sql: &str, args: &[&dyn rusqlite::ToSql]) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(args)
}

/// Applies one change. `Ok(false)`: a guard did not hold (version, fence, stock); the batch is
/// rolled back and the per-change path says which.
fn apply(conn: &Connection, shards: u32, w: &Write) -> rusqlite::Result<bool> {
    let shard = |id: &str| i64::from(crate::cluster::shard_of(id, shards));
    let one = |n: usize| n == 1;
    Ok(match w {
        Write::InsertOrder(o) => insert_order(conn, shard(&o.id), o)?,
        Write::UpdateOrder {
            order: o,
            expected_version,
        } => one(run(
            conn,
            sql::UPDATE_ORDER,
            params![
                o.rider_id,
                o.status.as_str(),
                o.version,
                o.updated_at,
                o.id,
                expected_version
            ],
        )?),
        Write::InsertMerchant(m) => one(run(
            conn,
            sql::INSERT_MERCHANT,
            params![
                m.id,
                m.name,
                m.location.lat,
                m.location.lng,
                m.open as i64,
                m.version,
                crate::domain::now_ms()
            ],
        )?),
        Write::UpdateMerchant {
            merchant: m,
            expected_version,
        } => one(run(
            conn,
            sql::UPDATE_MERCHANT,
            params![
                m.name,
                m.location.lat,
                m.location.lng,
                m.open as i64,
                m.version,
                m.id,
                expected_version
            ],
        )?),
        Write::PutSku {
            merchant_id,
            item,
            fence,
        } => {
            let updated = run(
                conn,
                sql::PUT_SKU,
                params![
                    item.name,
                    item.price_cents,
                    item.stock,
                    fence,
                    merchant_id,
                    item.sku,
                    fence
                ],
            )?;
            // Not updated: new, or held under a newer fence (the insert then fails on the key).
            updated == 1
                || one(run(
                    conn,
                    sql::INSERT_SKU,
                    params![
                        merchant_id,
                        item.sku,
                        item.name,
                        item.price_cents,
                        item.stock,
                        fence
                    ],
                )?)
        }
        Write::DeleteSku {
            merchant_id,
            sku,
            fence,
        } => {
            // Deleting a SKU that is not there is not an error; one held under a newer fence is.
            run(conn, sql::DELETE_SKU, params![merchant_id, sku, fence])? == 1
                || conn
                    .prepare_cached("SELECT 1 FROM skus WHERE merchant_id = ? AND sku = ?")?
                    .query_row(params![merchant_id, sku], |_| Ok(()))
                    .optional()?
                    .is_none()
        }
        Write::AdjustStock {
            merchant_id,
            sku,
            delta,
            fence,
        } => one(run(
            conn,
            sql::ADJUST_STOCK,
            params![delta, fence, merchant_id, sku, fence, delta],
        )?),
        Write::InsertRider(r) => one(run(
            conn,
            "INSERT INTO riders (id, name, online, lat, lng, current_order, version, \
             created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            params![
                r.id,
                r.name,
                r.online as i64,
                r.location.map(|l| l.lat),
                r.location.map(|l| l.lng),
                r.current_order,
                r.version,
                crate::domain::now_ms()
            ],
        )?),
        Write::UpdateRider {
            rider: r,
            expected_version,
        } => one(run(
            conn,
            "UPDATE riders SET name = ?, online = ?, lat = ?, lng = ?, current_order = ?, \
             version = ? WHERE id = ? AND version = ?",
            params![
                r.name,
                r.online as i64,
                r.location.map(|l| l.lat),
                r.location.map(|l| l.lng),
                r.current_order,
                r.version,
                r.id,
                expected_version
            ],
        )?),
        Write::Event(ev) => insert_event(conn, shard(&ev.aggregate_id), ev)?,
        Write::InsertPayment(p) => one(run(
            conn,
            sql::INSERT_PAYMENT,
            params![
                p.intent_id,
                p.order_id,
                p.amount_cents,
                p.method,
                p.status,
                shard(&p.order_id),
                p.created_at,
                p.updated_at
            ],
        )?),
        Write::SetPaymentStatus {
            intent_id,
            status,
            at,
        } => {
            run(
                conn,
                sql::SET_PAYMENT_STATUS,
                params![status, at, intent_id],
            )?;
            true
        }
        Write::PaymentEvent {
            event_id,
            intent_id,
            kind,
            at,
        } => one(run(
            conn,
            sql::INSERT_PAYMENT_EVENT,
            params![event_id, intent_id, kind, at],
        )?),
        Write::InsertRefund(r) => one(run(
            conn,
            sql::INSERT_REFUND,
            params![
                r.refund_id,
                r.order_id,
                r.intent_id,
                r.amount_cents,
                r.status,
                r.attempts,
                r.next_attempt_at,
                shard(&r.order_id),
                r.created_at,
                r.updated_at
            ],
        )?),
        Write::SetRefundStatus {
            refund_id,
            status,
            at,
        } => {
            run(conn, sql::SET_REFUND_STATUS, params![status, at, refund_id])?;
            true
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
            one(run(
                conn,
                sql::INSERT_SIM_INTENT,
                params![
                    intent_id,
                    order_id,
                    amount_cents,
                    method,
                    status,
                    created_at
                ],
            )?) && sim_schedule(conn, shard(order_id), callbacks)?
        }
        Write::SimRefund {
            refund_id,
            intent_id,
            order_id,
            amount_cents,
            created_at,
            callbacks,
        } => {
            one(run(
                conn,
                sql::INSERT_SIM_REFUND,
                params![refund_id, intent_id, order_id, amount_cents, created_at],
            )?) && sim_schedule(conn, shard(order_id), callbacks)?
        }
        Write::SimCallbacksDelivered(seqs) => {
            for seq in seqs {
                run(
                    conn,
                    "DELETE FROM sim_callbacks WHERE seq = ?",
                    params![seq],
                )?;
            }
            true
        }
        Write::SimCallbackRetry { seq, due_at } => {
            run(conn, sql::SIM_CALLBACK_RETRY, params![due_at, seq])?;
            true
        }
        Write::PruneOutbox {
            from,
            to,
            before,
            shipped_only,
        } => {
            let sql = format!(
                "DELETE FROM outbox WHERE {}",
                super::prune::prunable(*shipped_only)
            );
            run(conn, &sql, params![from, to, before])?;
            true
        }
    })
}

fn insert_order(conn: &Connection, shard: i64, o: &Order) -> rusqlite::Result<bool> {
    let items = serde_json::to_string(&o.items)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let n = run(
        conn,
        "INSERT INTO orders (id, customer_id, merchant_id, rider_id, status, items, \
         total_cents, deliver_lat, deliver_lng, request_hash, version, created_at, updated_at, \
         shard, pickup_lat, pickup_lng) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![
            o.id,
            o.customer_id,
            o.merchant_id,
            o.rider_id,
            o.status.as_str(),
            items,
            o.total_cents,
            o.deliver_to.lat,
            o.deliver_to.lng,
            o.request_hash,
            o.version,
            o.created_at,
            o.updated_at,
            shard,
            o.pickup.map(|l| l.lat),
            o.pickup.map(|l| l.lng)
        ],
    )?;
    Ok(n == 1)
}

fn insert_event(conn: &Connection, shard: i64, ev: &OutboxEvent) -> rusqlite::Result<bool> {
    let n = run(
        conn,
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at, \
         shard, traceparent) VALUES (?, ?, ?, ?, ?, ?, ?)",
        params![
            ev.aggregate_type,
            ev.aggregate_id,
            ev.event_type,
            ev.payload.as_str(),
            ev.created_at,
            shard,
            ev.traceparent
        ],
    )?;
    Ok(n == 1)
}

/// Schedules the simulated provider's callbacks (see `writer::sim_schedule`).
fn sim_schedule(
    conn: &Connection,
    shard: i64,
    callbacks: &[(String, i64, String)],
) -> rusqlite::Result<bool> {
    for (event_id, due, body) in callbacks {
        run(
            conn,
            sql::INSERT_SIM_CALLBACK,
            params![event_id, shard, due, body],
        )?;
    }
    Ok(true)
}
