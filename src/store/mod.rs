//! Persistence over sqlx's `Any` driver: SQLite (embedded default), PostgreSQL and MySQL/MariaDB.
//!
//! Order reads are coalesced by the loader (`loader.rs`); other reads go straight to the pool.
//! Writes are `WriteSet`s — the statements of one state change plus its outbox event — that the
//! group-commit writers (`writer.rs`), one queue each, partitioned by merchant, apply many to a
//! transaction: in bulk first, and one savepoint per change if anything in the bulk attempt
//! fails, so one conflicting change never sinks its batch neighbours. Writers and loaders run on
//! a thread of their own (`waimai-store`). On SQLite with a file, a batch is first tried on a
//! rusqlite connection on a thread of its own (`sqlite_writer.rs`), without sqlx's round trip per
//! statement; only a batch it rolls back goes through sqlx.
//! Every update checks a version (`WHERE id = ? AND version = ?`) and every stock write a fencing
//! token (`WHERE fence <= ?`).

mod loader;
mod payments;
pub mod prune;
mod schema;
mod sqlite_writer;
pub use sqlite_writer::FastBatches;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use tokio::sync::{mpsc, oneshot};

use crate::actors::order_machine::OrderStatus;
use crate::config::StoreConfig;
use crate::domain::Location;
use crate::model::{MenuItem, Merchant, Order, OutboxEvent, OutboxRow, Payload, Rider};

pub use payments::{PaymentRow, RefundRow, SimCallback};
pub use writer::Write;

/// The versions of every migration this build knows, oldest first: what a migrated database's
/// `waimai_schema` table lists.
pub fn schema_versions() -> Vec<i64> {
    schema::MIGRATIONS.iter().map(|m| m.version).collect()
}

/// The shard a write belongs to and the epoch its writer holds it under: the write lands only
/// if the shard's epoch in `shard_owners` is still this one (checked in the same transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardEpoch {
    /// The shard.
    pub shard: u32,
    /// The epoch the writer's node claimed it with.
    pub epoch: i64,
}

/// A row of `shard_owners`: who claimed a shard last, under which epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShardOwner {
    /// The shard.
    pub shard: u32,
    /// Bumped by every claim.
    pub epoch: i64,
    /// The claiming node.
    pub node_id: String,
    /// Its advertised base URL.
    pub addr: String,
}

/// A row of `cluster_nodes`: a node's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeRow {
    /// The node.
    pub node_id: String,
    /// Its advertised base URL.
    pub addr: String,
    /// When it started, ms since the epoch.
    pub started_at: i64,
    /// Its last heartbeat, ms since the epoch.
    pub last_seen: i64,
    /// Its consumer lag on the events topic, messages.
    pub lag: i64,
}

/// An outbox row waiting to be shipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Unshipped {
    /// The row's sequence number.
    pub seq: i64,
    /// Its shard (of its aggregate id).
    pub shard: u32,
    /// The event.
    pub event: OutboxEvent,
}

/// Which SQL dialect the URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:` — embedded file.
    Sqlite,
    /// `postgres:` / `postgresql:`.
    Postgres,
    /// `mysql:` / `mariadb:`.
    MySql,
}

impl Backend {
    /// Picks the backend from a connection URL.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            "mysql" | "mariadb" => Ok(Backend::MySql),
            other => Err(StoreError::Config(format!(
                "unsupported store scheme {other:?} (sqlite, postgres, mysql)"
            ))),
        }
    }

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::MySql => "mysql",
        }
    }
}

/// Store failures, as callers need to branch on them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row's version moved: another writer exists. The actor must reload, not overwrite.
    #[error("version conflict on {kind} {id}")]
    VersionConflict { kind: &'static str, id: String },
    /// A stock write carried a fencing token older than one that already wrote.
    #[error("stale fencing token {token} on {merchant_id}/{sku}")]
    StaleFence {
        merchant_id: String,
        sku: String,
        token: i64,
    },
    /// The writer's node no longer holds the shard under the epoch the write carried: another
    /// node claimed it since. Nothing of the change was written.
    #[error("shard {shard} is fenced: epoch {epoch} is no longer current")]
    Fenced { shard: u32, epoch: i64 },
    /// A stock decrement would take the stock below zero.
    #[error("insufficient stock for {merchant_id}/{sku}")]
    InsufficientStock { merchant_id: String, sku: String },
    /// An insert hit an existing key.
    #[error("duplicate {0}")]
    Duplicate(String),
    /// A row could not be decoded.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Bad store configuration.
    #[error("store config: {0}")]
    Config(String),
    /// The group-commit writer is gone (shutting down).
    #[error("store writer is closed")]
    Closed,
    /// Another node committed the change for this one and its database or writer failed.
    #[error("store (on the merchant's node): {0}")]
    Remote(String),
    /// The database said no.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The database is failing: its circuit breaker refused the call without trying it.
    #[error("{0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether this says the database is unreachable or failing (what trips its breaker), as
    /// opposed to a refusal of the change itself.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}

/// Why a change was refused, in a form that travels between nodes (a change committed for
/// another node's actor reports back exactly what `commit` would have).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Refusal {
    /// `StoreError::VersionConflict`.
    VersionConflict { kind: String, id: String },
    /// `StoreError::StaleFence`.
    StaleFence {
        merchant_id: String,
        sku: String,
        token: i64,
    },
    /// `StoreError::InsufficientStock`.
    InsufficientStock { merchant_id: String, sku: String },
    /// `StoreError::Duplicate`.
    Duplicate(String),
    /// `StoreError::Fenced`.
    Fenced { shard: u32, epoch: i64 },
    /// Anything else (the database or the writer failed).
    Failed(String),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::VersionConflict { kind, id } => Refusal::VersionConflict {
                kind: kind.to_string(),
                id,
            },
            StoreError::StaleFence {
                merchant_id,
                sku,
                token,
            } => Refusal::StaleFence {
                merchant_id,
                sku,
                token,
            },
            StoreError::InsufficientStock { merchant_id, sku } => {
                Refusal::InsufficientStock { merchant_id, sku }
            }
            StoreError::Duplicate(what) => Refusal::Duplicate(what),
            StoreError::Fenced { shard, epoch } => Refusal::Fenced { shard, epoch },
            other => Refusal::Failed(other.to_string()),
        }
    }
}

impl From<Refusal> for StoreError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::VersionConflict { kind, id } => StoreError::VersionConflict {
                kind: match kind.as_str() {
                    "order" => "order",
                    "merchant" => "merchant",
                    "rider" => "rider",
                    _ => "entity",
                },
                id,
            },
            Refusal::StaleFence {
                merchant_id,
                sku,
                token,
            } => StoreError::StaleFence {
                merchant_id,
                sku,
                token,
            },
            Refusal::InsufficientStock { merchant_id, sku } => {
                StoreError::InsufficientStock { merchant_id, sku }
            }
            Refusal::Duplicate(what) => StoreError::Duplicate(what),
            Refusal::Fenced { shard, epoch } => StoreError::Fenced { shard, epoch },
            Refusal::Failed(why) => StoreError::Remote(why),
        }
    }
}

/// Columns of an order row, in `order_from_row`'s terms.
const ORDER_COLUMNS: &str = "id, customer_id, merchant_id, rider_id, status, items, total_cents, \
     deliver_lat, deliver_lng, request_hash, version, created_at, updated_at, pickup_lat, \
     pickup_lng";

/// Order-loading tasks: two rounds can be in flight while the next one queues.
const LOADERS: usize = 2;

/// A cloneable handle to the store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// Connection pool shared by readers and the writer.
    pool: AnyPool,
    /// Dialect.
    backend: Backend,
    /// Queue into the group-commit writer; `None` once closed.
    writer: std::sync::Mutex<Option<Vec<mpsc::Sender<writer::Job>>>>,
    /// Queue into the order loaders (coalesced reads).
    loader: mpsc::Sender<loader::Load>,
    /// Fires once the writers have drained the queue (awaited on close so every acknowledged
    /// write is flushed).
    flushed: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
    /// Number of shards: rows are stamped with the shard of their entity.
    shards: u32,
    /// Woken after every commit that wrote outbox rows (the relay ships them).
    outbox: Arc<tokio::sync::Notify>,
    /// Changes queued for the writers (for the queue-depth gauge and load shedding).
    queued: Arc<std::sync::atomic::AtomicI64>,
    /// The circuit breaker around commits and entity loads, once the node installs one.
    breaker: std::sync::OnceLock<crate::breaker::Breaker>,
    /// What SQLite's fast writer did, when there is one.
    fast: Option<Arc<sqlite_writer::FastCounts>>,
}

/// The settings of every SQLite connection: the pool's and the fast writer's
/// (`sqlite_writer.rs`).
///
/// A bigger page cache (32 MiB, grown only as used) and the first 64 MiB of the file
/// memory-mapped: without them the writer re-read and spilled pages through read()/write() calls
/// on every batch (seen in perf as pread/pagerStress). The map is kept small because mapped pages
/// count in the node's RSS (a full map showed the whole database file there once reads had
/// touched it). Statement journals (multi-row statements inside a transaction) in memory rather
/// than temp files (`subjournalPageIfRequired` was 4.6% of the writer's profile), and
/// checkpoints every 16 MiB of WAL instead of 4 MiB: hot index pages are written back once per
/// checkpoint, not once per 4 MiB.
const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA cache_size = -32768",
    "PRAGMA mmap_size = 67108864",
    "PRAGMA temp_store = MEMORY",
    "PRAGMA wal_autocheckpoint = 4000",
];

/// Connection options for `url` without sqlx's per-statement log record. Each statement asked
/// `log` and `tracing` whether `sqlx::query` was enabled at debug level and, through
/// `tracing_log`, ran the subscriber's filters to be told no (about 2% of a node in
/// `lifecycle`). Slow statements (over a second) are still logged as warnings.
fn quiet_options(url: &str) -> Result<sqlx::any::AnyConnectOptions, StoreError> {
    use sqlx::ConnectOptions;
    let opts: sqlx::any::AnyConnectOptions = url.parse()?;
    Ok(opts.log_statements(log::LevelFilter::Off))
}

impl Store {
    /// Connects, creating the SQLite file's folder if needed, and starts the group-commit writers.
    /// `shards` is the shard count rows are stamped with (`shards.count`).
    pub async fn connect(cfg: &StoreConfig, shards: u32) -> Result<Store, StoreError> {
        let shards = shards.max(1);
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(&cfg.url)?;
        let mut url = cfg.url.clone();
        if backend == Backend::Sqlite {
            prepare_sqlite_path(&mut url)?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(cfg.max_connections.max(2))
            .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
            // No ping before every checkout: a profile of a node under load showed 3.6% of its
            // CPU in sqlx's `ping` (one extra round trip per loader round, relay round and
            // read). A connection that broke fails its statement, and the pool replaces it.
            .test_before_acquire(false)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for pragma in SQLITE_PRAGMAS {
                            conn.execute(*pragma).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(quiet_options(&url)?)
            .await?;
        // SQLite has one writer; more tasks would only queue on its lock.
        let writers = if backend == Backend::Sqlite {
            1
        } else {
            cfg.writers.max(1)
        };
        // One queue per writer, changes partitioned by merchant (see `Write::partition`): two
        // writers never hold row locks on the same merchant's SKUs, so they do not wait on or
        // deadlock with each other (with a shared queue, 2 writers on PostgreSQL were slower
        // than 1).
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..writers)
            .map(|_| mpsc::channel((cfg.queue_depth / writers).max(1)))
            .unzip();
        let (loader, loads) = mpsc::channel(cfg.queue_depth.max(1));
        let loads = Arc::new(tokio::sync::Mutex::new(loads));
        let (flushed, flushed_rx) = oneshot::channel();
        let batch_max = cfg.batch_max.max(1);
        let store_pool = pool.clone();
        let outbox = Arc::new(tokio::sync::Notify::new());
        let queued = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let writer_ctx = writer::Context {
            backend,
            batch_max,
            shards,
            outbox: outbox.clone(),
            queued: queued.clone(),
        };
        // The writers and loaders get a thread of their own. On the node's shared runtime each
        // statement's completion waited in the run queue behind hundreds of HTTP tasks, and a
        // batch is a chain of statements: under load the writer spent most of its time
        // waiting to be polled, not writing. Here it is polled as soon as its statement is done.
        // SQLite on a file: the writer's fast path (`sqlite_writer.rs`), one batch per round
        // trip. It opens the very file the pool has open, as SQLite itself names it (so a URL's
        // own spelling can never send it to another file); an in-memory database has no name.
        let mut fast = None;
        if backend == Backend::Sqlite {
            let (file,): (String,) =
                sqlx::query_as("SELECT file FROM pragma_database_list WHERE name = 'main'")
                    .fetch_one(&pool)
                    .await?;
            if !file.is_empty() {
                fast = sqlite_writer::FastWriter::start(&file, shards);
            }
        }
        let fast_counts = fast.as_ref().map(|f| f.counts());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Config(format!("store runtime: {e}")))?;
        std::thread::Builder::new()
            .name("waimai-store".into())
            .spawn(move || {
                rt.block_on(async move {
                    let loaders: Vec<_> = (0..LOADERS)
                        .map(|_| {
                            tokio::spawn(loader::run(store_pool.clone(), backend, loads.clone()))
                        })
                        .collect();
                    // SQLite has one writer: the first (and only) one takes the fast writer.
                    let writers = receivers.into_iter().map(|rx| {
                        writer::run(store_pool.clone(), writer_ctx.clone(), rx, fast.take())
                    });
                    futures::future::join_all(writers).await;
                    let _ = flushed.send(());
                    // Reads keep working until the last handle to the store is dropped.
                    futures::future::join_all(loaders).await;
                });
            })
            .map_err(|e| StoreError::Config(format!("store thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                backend,
                loader,
                writer: std::sync::Mutex::new(Some(senders)),
                flushed: tokio::sync::Mutex::new(Some(flushed_rx)),
                shards,
                outbox,
                queued,
                breaker: std::sync::OnceLock::new(),
                fast: fast_counts,
            }),
        })
    }

    /// The dialect in use.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Brings the schema up to date: applies the migrations this database has not seen, under a
    /// migration lock (PostgreSQL advisory lock, MySQL `GET_LOCK`), so nodes that start at the
    /// same moment on an empty database take turns instead of racing on the DDL.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let b = self.inner.backend;
        let mut conn = self.inner.pool.acquire().await?;
        match b {
            Backend::Postgres => {
                conn.execute("SELECT pg_advisory_lock(7261541901)").await?;
            }
            Backend::MySql => {
                let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('waimai_migrate', 120)")
                    .fetch_one(&mut *conn)
                    .await?;
                if got != Some(1) {
                    return Err(StoreError::Config(
                        "timed out waiting for the migration lock".into(),
                    ));
                }
            }
            Backend::Sqlite => {}
        }
        let outcome = migrate_locked(&mut conn, b).await;
        let unlock = match b {
            Backend::Postgres => Some("SELECT pg_advisory_unlock(7261541901)"),
            Backend::MySql => Some("SELECT RELEASE_LOCK('waimai_migrate')"),
            Backend::Sqlite => None,
        };
        if let Some(sql) = unlock {
            if let Err(e) = conn.execute(sql).await {
                // A lock we cannot release dies with the connection.
                tracing::warn!(error = %e, "could not release the migration lock; closing the connection");
                let _ = sqlx::Connection::close(conn.detach()).await;
            }
        }
        outcome
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
        Ok(())
    }

    /// Applies one change atomically, batched with others (group commit). Returns once durable.
    pub async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.commit_fenced(None, writes).await
    }

    /// Puts `breaker` around commits and entity loads: after its run of outages (connection
    /// failures, pool timeouts) they are refused at once with `Unavailable` until a probe
    /// succeeds. Installed once, by the node.
    pub fn guard(&self, breaker: crate::breaker::Breaker) {
        let _ = self.inner.breaker.set(breaker);
    }

    /// Runs `call` through the breaker, if one is installed.
    async fn guarded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(b) = self.inner.breaker.get() else {
            return call.await;
        };
        b.call(call, StoreError::is_outage)
            .await
            .map_err(|e| match e {
                crate::breaker::BreakerError::Inner(e) => e,
                other => StoreError::Unavailable(other.to_string()),
            })
    }

    /// Like `commit`, but only while `fence`'s shard is still held under its epoch (a cluster
    /// node writes for the shards it owns this way; a stale owner gets `Fenced`).
    pub async fn commit_fenced(
        &self,
        fence: Option<ShardEpoch>,
        mut writes: Vec<Write>,
    ) -> Result<(), StoreError> {
        // Inside a sampled trace, the commit is a span of its own; its outbox rows keep its
        // trace context and the batch that carries it links to it. Otherwise (the default: no
        // exporter, so nothing is sampled) none of that is made, so every create does not pay
        // for a span, a string per event and an outbox column that nothing would read.
        if !crate::telemetry::current_is_sampled() {
            return self.enqueue(fence, writes, None).await;
        }
        let span = tracing::info_span!(
            target: "waimai::store",
            "store.commit",
            otel.name = "store commit",
            writes = writes.len(),
        );
        let trace = crate::telemetry::traceparent(&span);
        if let Some(tp) = &trace {
            for w in &mut writes {
                if let Write::Event(e) = w {
                    e.traceparent.get_or_insert_with(|| tp.clone());
                }
            }
        }
        tracing::Instrument::instrument(self.enqueue(fence, writes, trace), span).await
    }

    async fn enqueue(
        &self,
        fence: Option<ShardEpoch>,
        writes: Vec<Write>,
        trace: Option<String>,
    ) -> Result<(), StoreError> {
        self.guarded(self.commit_queued(fence, writes, trace)).await
    }

    async fn commit_queued(
        &self,
        fence: Option<ShardEpoch>,
        writes: Vec<Write>,
        trace: Option<String>,
    ) -> Result<(), StoreError> {
        let sender = {
            let queues = self.inner.writer.lock().map_err(|_| StoreError::Closed)?;
            let queues = queues.as_ref().ok_or(StoreError::Closed)?;
            let key = writes.iter().find_map(Write::partition).unwrap_or("");
            let i = crate::cluster::shard_of(key, queues.len() as u32) as usize;
            queues.get(i).ok_or(StoreError::Closed)?.clone()
        };
        let (reply, rx) = oneshot::channel();
        let queued = &self.inner.queued;
        queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::metrics::STORE_QUEUE_DEPTH.inc();
        if sender
            .send(writer::Job {
                writes,
                fence,
                reply,
                trace,
            })
            .await
            .is_err()
        {
            queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::STORE_QUEUE_DEPTH.dec();
            return Err(StoreError::Closed);
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Batches SQLite's fast writer committed and rolled back, in this store (the metric
    /// `waimai_store_fast_batches_total` adds up every store of the process); `None` without
    /// a fast writer (another backend, or an in-memory database).
    pub fn fast_batches(&self) -> Option<FastBatches> {
        self.inner.fast.as_ref().map(|c| c.get())
    }

    /// Checkpoints of SQLite's checkpointer thread that copied WAL pages into the database
    /// file, in this store; `None` without a fast writer.
    pub fn wal_checkpoints(&self) -> Option<u64> {
        self.inner.fast.as_ref().map(|c| c.checkpoints())
    }

    /// Changes queued for the writers and not yet taken into a batch.
    pub fn queued(&self) -> i64 {
        self.inner.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves after the next commit that wrote outbox rows (or at once if one happened since
    /// the last call): the relay's wake-up.
    pub async fn outbox_written(&self) {
        self.inner.outbox.notified().await;
    }

    /// Number of shards rows are stamped with.
    pub fn shard_count(&self) -> u32 {
        self.inner.shards
    }

    /// Stops taking writes and waits until everything queued is committed.
    pub async fn close(&self) {
        if let Ok(mut w) = self.inner.writer.lock() {
            w.take();
        }
        if let Some(flushed) = self.inner.flushed.lock().await.take() {
            let _ = flushed.await;
        }
    }

    /// Loads an order. Concurrent loads are answered together (see `loader.rs`).
    pub async fn load_order(&self, id: &str) -> Result<Option<Order>, StoreError> {
        self.guarded(self.load_order_queued(id)).await
    }

    async fn load_order_queued(&self, id: &str) -> Result<Option<Order>, StoreError> {
        crate::metrics::STORE_ORDER_READS.inc();
        let (reply, rx) = oneshot::channel();
        self.inner
            .loader
            .send(loader::Load {
                id: id.to_string(),
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Every order in one of `statuses` (optionally of one merchant), oldest first: recovery of
    /// timers and dispatch at startup, and the merchant feed's snapshot.
    pub async fn orders_in(
        &self,
        statuses: &[OrderStatus],
        merchant_id: Option<&str>,
    ) -> Result<Vec<Order>, StoreError> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; statuses.len()].join(", ");
        let by_merchant = if merchant_id.is_some() {
            " AND merchant_id = ?"
        } else {
            ""
        };
        let sql = self.sql(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE status IN ({marks}){by_merchant} \
             ORDER BY created_at"
        ));
        let mut q = sqlx::query(&sql);
        for s in statuses {
            q = q.bind(s.as_str());
        }
        if let Some(m) = merchant_id {
            q = q.bind(m);
        }
        let rows = q.fetch_all(&self.inner.pool).await?;
        rows.iter().map(order_from_row).collect()
    }

    /// Ids of the riders stored as online (to rebuild the dispatcher's index at startup).
    pub async fn online_riders(&self) -> Result<Vec<String>, StoreError> {
        let sql = self.sql("SELECT id FROM riders WHERE online = 1");
        let rows = sqlx::query(&sql).fetch_all(&self.inner.pool).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
            .collect()
    }

    /// Loads a merchant and its menu.
    pub async fn load_merchant(
        &self,
        id: &str,
    ) -> Result<Option<(Merchant, Vec<(MenuItem, i64)>)>, StoreError> {
        self.guarded(self.load_merchant_now(id)).await
    }

    /// Every merchant's profile (the catalog's load and periodic merge). Merchants are never
    /// deleted, so a merge of this into what a node knows never loses one.
    pub async fn list_merchants(&self) -> Result<Vec<Merchant>, StoreError> {
        self.guarded(async {
            crate::metrics::STORE_MERCHANT_READS
                .with_label_values(&["all"])
                .inc();
            let sql = self.sql("SELECT id, name, lat, lng, is_open, version FROM merchants");
            let rows = sqlx::query(&sql).fetch_all(&self.inner.pool).await?;
            rows.iter().map(merchant_row).collect()
        })
        .await
    }

    async fn load_merchant_now(
        &self,
        id: &str,
    ) -> Result<Option<(Merchant, Vec<(MenuItem, i64)>)>, StoreError> {
        crate::metrics::STORE_MERCHANT_READS
            .with_label_values(&["one"])
            .inc();
        let sql =
            self.sql("SELECT id, name, lat, lng, is_open, version FROM merchants WHERE id = ?");
        let Some(r) = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await?
        else {
            return Ok(None);
        };
        let merchant = merchant_row(&r)?;
        let sql = self.sql(
            "SELECT sku, name, price_cents, stock, fence FROM skus WHERE merchant_id = ? ORDER BY sku",
        );
        let rows = sqlx::query(&sql)
            .bind(id)
            .fetch_all(&self.inner.pool)
            .await?;
        let mut menu = Vec::with_capacity(rows.len());
        for r in rows {
            menu.push((
                MenuItem {
                    sku: r.try_get("sku")?,
                    name: text(&r, "name")?,
                    price_cents: r.try_get("price_cents")?,
                    stock: r.try_get("stock")?,
                },
                r.try_get("fence")?,
            ));
        }
        Ok(Some((merchant, menu)))
    }

    /// Loads a rider.
    pub async fn load_rider(&self, id: &str) -> Result<Option<Rider>, StoreError> {
        self.guarded(self.load_rider_now(id)).await
    }

    async fn load_rider_now(&self, id: &str) -> Result<Option<Rider>, StoreError> {
        let sql = self.sql(
            "SELECT id, name, online, lat, lng, current_order, version FROM riders WHERE id = ?",
        );
        let Some(r) = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await?
        else {
            return Ok(None);
        };
        let lat: Option<f64> = r.try_get("lat")?;
        let lng: Option<f64> = r.try_get("lng")?;
        Ok(Some(Rider {
            id: r.try_get("id")?,
            name: text(&r, "name")?,
            online: r.try_get::<i64, _>("online")? != 0,
            location: lat.zip(lng).map(|(lat, lng)| Location { lat, lng }),
            current_order: r.try_get("current_order")?,
            version: r.try_get("version")?,
        }))
    }

    /// The stored stock and fence of one SKU.
    pub async fn sku_stock(
        &self,
        merchant_id: &str,
        sku: &str,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let sql = self.sql("SELECT stock, fence FROM skus WHERE merchant_id = ? AND sku = ?");
        let row = sqlx::query(&sql)
            .bind(merchant_id)
            .bind(sku)
            .fetch_optional(&self.inner.pool)
            .await?;
        row.map(|r| Ok((r.try_get("stock")?, r.try_get("fence")?)))
            .transpose()
    }

    /// How many orders a merchant has in each status.
    pub async fn count_orders(
        &self,
        merchant_id: &str,
    ) -> Result<Vec<(OrderStatus, i64)>, StoreError> {
        let sql = self.sql("SELECT status FROM orders WHERE merchant_id = ?");
        let rows = sqlx::query(&sql)
            .bind(merchant_id)
            .fetch_all(&self.inner.pool)
            .await?;
        let mut counts: Vec<(OrderStatus, i64)> = Vec::new();
        for r in rows {
            let s: String = r.try_get("status")?;
            let st =
                OrderStatus::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("status {s}")))?;
            match counts.iter_mut().find(|(k, _)| *k == st) {
                Some((_, n)) => *n += 1,
                None => counts.push((st, 1)),
            }
        }
        Ok(counts)
    }

    /// The outbox events of one aggregate, oldest first. For tests and inspection: it scans the
    /// outbox, which has no index by entity (migration 5 dropped it; nothing on a hot path
    /// reads it).
    pub async fn outbox_for(&self, aggregate_id: &str) -> Result<Vec<OutboxRow>, StoreError> {
        let sql = self.sql(
            "SELECT seq, aggregate_type, aggregate_id, event_type, payload, created_at, traceparent \
             FROM outbox \
             WHERE aggregate_id = ? ORDER BY seq",
        );
        let rows = sqlx::query(&sql)
            .bind(aggregate_id)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let payload = text(r, "payload")?;
                Ok(OutboxRow {
                    seq: r.try_get("seq")?,
                    event: OutboxEvent {
                        aggregate_type: r.try_get("aggregate_type")?,
                        aggregate_id: r.try_get("aggregate_id")?,
                        event_type: r.try_get("event_type")?,
                        payload: Payload::from_text(payload)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        created_at: r.try_get("created_at")?,
                        traceparent: opt_text(r, "traceparent")?,
                    },
                })
            })
            .collect()
    }

    /// For each non-terminal status, when its oldest order entered it (ms since the epoch).
    pub async fn oldest_by_status(&self) -> Result<Vec<(OrderStatus, i64)>, StoreError> {
        let open: Vec<&str> = crate::actors::order_machine::ALL_STATUSES
            .iter()
            .filter(|s| !s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        let sql = self.sql(&format!(
            "SELECT status, MIN(updated_at) AS oldest FROM orders WHERE status IN ({}) \
             GROUP BY status",
            marks(open.len())
        ));
        let mut q = sqlx::query(&sql);
        for s in &open {
            q = q.bind(*s);
        }
        let rows = q.fetch_all(&self.inner.pool).await?;
        rows.iter()
            .map(|r| {
                let s = text(r, "status")?;
                let st = OrderStatus::parse(&s)
                    .ok_or_else(|| StoreError::Corrupt(format!("status {s}")))?;
                Ok((st, r.try_get::<i64, _>("oldest")?))
            })
            .collect()
    }

    // ---- cluster ----

    /// Claims `shard` for `node_id`: bumps its epoch (creating the row at epoch 1) and returns
    /// the new epoch. From then on every write fenced with an older epoch is refused. The bump
    /// waits for writers that checked the old epoch to commit (they hold the row in share
    /// mode), so no write of the previous owner lands after it.
    pub async fn claim_shard(
        &self,
        shard: u32,
        node_id: &str,
        addr: &str,
    ) -> Result<i64, StoreError> {
        let now = crate::domain::now_ms();
        for _ in 0..5 {
            let mut tx = self.inner.pool.begin().await?;
            let sql = self.sql(
                "UPDATE shard_owners SET epoch = epoch + 1, node_id = ?, addr = ?, updated_at = ? \
                 WHERE shard = ?",
            );
            let done = sqlx::query(&sql)
                .bind(node_id)
                .bind(addr)
                .bind(now)
                .bind(i64::from(shard))
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                let sql = self.sql(
                    "INSERT INTO shard_owners (shard, epoch, node_id, addr, updated_at) \
                     VALUES (?, 1, ?, ?, ?)",
                );
                let inserted = sqlx::query(&sql)
                    .bind(i64::from(shard))
                    .bind(node_id)
                    .bind(addr)
                    .bind(now)
                    .execute(&mut *tx)
                    .await;
                if let Err(e) = inserted {
                    let _ = tx.rollback().await;
                    if matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation()) {
                        continue; // another node created it first: bump theirs
                    }
                    return Err(e.into());
                }
            }
            let sql = self.sql("SELECT epoch FROM shard_owners WHERE shard = ?");
            let epoch: i64 = sqlx::query_scalar(&sql)
                .bind(i64::from(shard))
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(epoch);
        }
        Err(StoreError::Config(format!(
            "could not claim shard {shard}: its row keeps changing"
        )))
    }

    /// Every claimed shard's owner.
    pub async fn shard_owners(&self) -> Result<Vec<ShardOwner>, StoreError> {
        let rows = sqlx::query("SELECT shard, epoch, node_id, addr FROM shard_owners")
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ShardOwner {
                    shard: u32::try_from(r.try_get::<i64, _>("shard")?)
                        .map_err(|e| StoreError::Corrupt(format!("shard: {e}")))?,
                    epoch: r.try_get("epoch")?,
                    node_id: text(r, "node_id")?,
                    addr: text(r, "addr")?,
                })
            })
            .collect()
    }

    /// Orders of `shards` in one of `statuses` (their deadlines are re-armed by a node that
    /// takes the shards over).
    pub async fn orders_of_shards(
        &self,
        shards: &[u32],
        statuses: &[OrderStatus],
    ) -> Result<Vec<Order>, StoreError> {
        if shards.is_empty() || statuses.is_empty() {
            return Ok(Vec::new());
        }
        let sql = self.sql(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE shard IN ({}) AND status IN ({}) \
             ORDER BY created_at",
            marks(shards.len()),
            marks(statuses.len())
        ));
        let mut q = sqlx::query(&sql);
        for s in shards {
            q = q.bind(i64::from(*s));
        }
        for s in statuses {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(&self.inner.pool).await?;
        rows.iter().map(order_from_row).collect()
    }

    /// Up to `limit` outbox rows of `shards` not shipped yet, oldest first.
    pub async fn unshipped(
        &self,
        shards: &[u32],
        limit: usize,
    ) -> Result<Vec<Unshipped>, StoreError> {
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        let sql = self.unshipped_sql(shards.len(), limit);
        let mut q = sqlx::query(&sql);
        for s in shards {
            q = q.bind(i64::from(*s));
        }
        let rows = q.fetch_all(&self.inner.pool).await?;
        rows.iter()
            .map(|r| {
                let payload = text(r, "payload")?;
                Ok(Unshipped {
                    seq: r.try_get("seq")?,
                    shard: u32::try_from(r.try_get::<i64, _>("shard")?)
                        .map_err(|e| StoreError::Corrupt(format!("shard: {e}")))?,
                    event: OutboxEvent {
                        aggregate_type: text(r, "aggregate_type")?,
                        aggregate_id: text(r, "aggregate_id")?,
                        event_type: text(r, "event_type")?,
                        payload: Payload::from_text(payload)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        created_at: r.try_get("created_at")?,
                        traceparent: opt_text(r, "traceparent")?,
                    },
                })
            })
            .collect()
    }

    /// The relay's read: on SQLite it walks the partial index `outbox_unshipped` in `seq` order.
    fn unshipped_sql(&self, shards: usize, limit: usize) -> String {
        self.sql(&format!(
            "SELECT seq, shard, aggregate_type, aggregate_id, event_type, payload, created_at, \
             traceparent FROM outbox WHERE published = 0 AND shard IN ({}) ORDER BY seq LIMIT {}",
            marks(shards),
            limit.max(1)
        ))
    }

    /// Marks outbox rows as shipped.
    pub async fn mark_shipped(&self, seqs: &[i64]) -> Result<(), StoreError> {
        for chunk in seqs.chunks(500) {
            let sql = self.sql(&format!(
                "UPDATE outbox SET published = 1 WHERE seq IN ({})",
                marks(chunk.len())
            ));
            let mut q = sqlx::query(&sql);
            for s in chunk {
                q = q.bind(*s);
            }
            q.execute(&self.inner.pool).await?;
        }
        Ok(())
    }

    /// How many outbox rows of `shards` wait to be shipped, and when the oldest was written.
    pub async fn outbox_backlog(&self, shards: &[u32]) -> Result<(i64, Option<i64>), StoreError> {
        if shards.is_empty() {
            return Ok((0, None));
        }
        let sql = self.sql(&format!(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox \
             WHERE published = 0 AND shard IN ({})",
            marks(shards.len())
        ));
        let mut q = sqlx::query(&sql);
        for s in shards {
            q = q.bind(i64::from(*s));
        }
        let r = q.fetch_one(&self.inner.pool).await?;
        Ok((r.try_get("n")?, r.try_get("oldest")?))
    }

    /// Records that `node_id` is alive (and its consumer lag).
    pub async fn heartbeat(&self, node: &NodeRow) -> Result<(), StoreError> {
        let upsert = match self.inner.backend {
            Backend::MySql => {
                "INSERT INTO cluster_nodes (node_id, addr, started_at, last_seen, lag) \
                 VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE addr = VALUES(addr), \
                 started_at = VALUES(started_at), last_seen = VALUES(last_seen), lag = VALUES(lag)"
            }
            _ => {
                "INSERT INTO cluster_nodes (node_id, addr, started_at, last_seen, lag) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET addr = excluded.addr, \
                 started_at = excluded.started_at, last_seen = excluded.last_seen, \
                 lag = excluded.lag"
            }
        };
        let sql = self.sql(upsert);
        sqlx::query(&sql)
            .bind(&node.node_id)
            .bind(&node.addr)
            .bind(node.started_at)
            .bind(node.last_seen)
            .bind(node.lag)
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    /// Every node that ever sent a heartbeat.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let rows =
            sqlx::query("SELECT node_id, addr, started_at, last_seen, lag FROM cluster_nodes")
                .fetch_all(&self.inner.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeRow {
                    node_id: text(r, "node_id")?,
                    addr: text(r, "addr")?,
                    started_at: r.try_get("started_at")?,
                    last_seen: r.try_get("last_seen")?,
                    lag: r.try_get("lag")?,
                })
            })
            .collect()
    }

    /// Stamps rows written before shards were recorded (schema version 1) with their shard:
    /// orders still in a non-terminal status, and outbox rows not shipped yet. Run by a cluster
    /// node at start, so a database that served one node can serve a cluster.
    pub async fn backfill_shards(&self) -> Result<usize, StoreError> {
        let open: Vec<&str> = crate::actors::order_machine::ALL_STATUSES
            .iter()
            .filter(|s| !s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        let mut done = 0;
        loop {
            let sql = self.sql(&format!(
                "SELECT id FROM orders WHERE shard IS NULL AND status IN ({}) LIMIT 2000",
                marks(open.len())
            ));
            let mut q = sqlx::query(&sql);
            for s in &open {
                q = q.bind(*s);
            }
            let ids: Vec<String> = q
                .fetch_all(&self.inner.pool)
                .await?
                .iter()
                .map(|r| text(r, "id"))
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                break;
            }
            done += ids.len();
            let keyed: Vec<(String, String)> = ids.into_iter().map(|i| (i.clone(), i)).collect();
            self.stamp("orders", "id", keyed).await?;
        }
        loop {
            let sql = "SELECT seq, aggregate_id FROM outbox WHERE shard IS NULL AND published = 0 \
                       LIMIT 2000";
            let rows = sqlx::query(sql).fetch_all(&self.inner.pool).await?;
            if rows.is_empty() {
                break;
            }
            done += rows.len();
            let keyed = rows
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get::<i64, _>("seq")?.to_string(),
                        text(r, "aggregate_id")?,
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            self.stamp("outbox", "seq", keyed).await?;
        }
        Ok(done)
    }

    /// Sets `shard` on the rows of `table` whose `key` is given, from the entity id beside it.
    async fn stamp(
        &self,
        table: &str,
        key: &str,
        rows: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        let mut by_shard: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
        for (k, entity) in rows {
            by_shard
                .entry(crate::cluster::shard_of(&entity, self.inner.shards))
                .or_default()
                .push(k);
        }
        let numeric = key == "seq";
        for (shard, keys) in by_shard {
            for chunk in keys.chunks(500) {
                let sql = self.sql(&format!(
                    "UPDATE {table} SET shard = ? WHERE {key} IN ({})",
                    marks(chunk.len())
                ));
                let mut q = sqlx::query(&sql).bind(i64::from(shard));
                for k in chunk {
                    q = if numeric {
                        q.bind(
                            k.parse::<i64>()
                                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        )
                    } else {
                        q.bind(k.as_str())
                    };
                }
                q.execute(&self.inner.pool).await?;
            }
        }
        Ok(())
    }

    /// The connection pool (reads outside the writers).
    fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// Rewrites `?` placeholders for the backend (PostgreSQL wants `$1, $2, ...`).
    fn sql(&self, sql: &str) -> String {
        dialect(self.inner.backend, sql)
    }
}

/// `?, ?, ..` with `n` placeholders.
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Applies the migrations `conn`'s database has not seen; the caller holds the migration lock.
async fn migrate_locked(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
) -> Result<(), StoreError> {
    conn.execute(schema::version_table(backend)).await?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM waimai_schema")
        .fetch_all(&mut *conn)
        .await?;
    for m in schema::MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        // SQLite and PostgreSQL run DDL in transactions, so a step applies whole or not at
        // all; MySQL commits each DDL statement by itself.
        let transactional = backend != Backend::MySql;
        if transactional {
            conn.execute("BEGIN").await?;
        }
        let step = async {
            for stmt in m.statements(backend) {
                conn.execute(*stmt).await?;
            }
            let sql = dialect(
                backend,
                "INSERT INTO waimai_schema (version, name, applied_at) VALUES (?, ?, ?)",
            );
            sqlx::query(&sql)
                .bind(m.version)
                .bind(m.name)
                .bind(crate::domain::now_ms())
                .execute(&mut *conn)
                .await?;
            Ok::<(), sqlx::Error>(())
        };
        match step.await {
            Ok(()) => {
                if transactional {
                    conn.execute("COMMIT").await?;
                }
                tracing::info!(version = m.version, name = m.name, "schema migrated");
            }
            Err(e) => {
                if transactional {
                    let _ = conn.execute("ROLLBACK").await;
                }
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// Rewrites `?` placeholders into the backend's form.
pub(crate) fn dialect(backend: Backend, sql: &str) -> String {
    if backend != Backend::Postgres {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(ch);
        }
    }
    out
}

/// Reads a `TEXT` column. MySQL reports `TEXT` as a BLOB type, which sqlx's `Any` driver hands
/// over as bytes and refuses to decode into `String`; take the bytes and check they are UTF-8.
/// A `merchants` row (id, name, lat, lng, is_open, version).
fn merchant_row(r: &AnyRow) -> Result<Merchant, StoreError> {
    Ok(Merchant {
        id: r.try_get("id")?,
        name: text(r, "name")?,
        location: Location {
            lat: r.try_get("lat")?,
            lng: r.try_get("lng")?,
        },
        open: r.try_get::<i64, _>("is_open")? != 0,
        version: r.try_get("version")?,
    })
}

fn text(r: &AnyRow, col: &str) -> Result<String, StoreError> {
    match r.try_get::<String, _>(col) {
        Ok(s) => Ok(s),
        Err(sqlx::Error::ColumnDecode { .. }) => {
            let bytes: Vec<u8> = r.try_get(col)?;
            String::from_utf8(bytes).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// A nullable text column.
fn opt_text(r: &AnyRow, col: &str) -> Result<Option<String>, StoreError> {
    match r.try_get::<Option<String>, _>(col) {
        Ok(s) => Ok(s),
        Err(sqlx::Error::ColumnDecode { .. }) => r
            .try_get::<Option<Vec<u8>>, _>(col)?
            .map(|b| String::from_utf8(b).map_err(|e| StoreError::Corrupt(format!("{col}: {e}"))))
            .transpose(),
        Err(e) => Err(e.into()),
    }
}

fn order_from_row(r: &AnyRow) -> Result<Order, StoreError> {
    let status: String = r.try_get("status")?;
    let items = text(r, "items")?;
    Ok(Order {
        id: r.try_get("id")?,
        customer_id: r.try_get("customer_id")?,
        merchant_id: r.try_get("merchant_id")?,
        rider_id: r.try_get("rider_id")?,
        status: OrderStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status}")))?,
        items: serde_json::from_str(&items).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        total_cents: r.try_get("total_cents")?,
        deliver_to: Location {
            lat: r.try_get("deliver_lat")?,
            lng: r.try_get("deliver_lng")?,
        },
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        request_hash: r.try_get("request_hash")?,
        pickup: match (
            r.try_get::<Option<f64>, _>("pickup_lat")?,
            r.try_get::<Option<f64>, _>("pickup_lng")?,
        ) {
            (Some(lat), Some(lng)) => Some(Location { lat, lng }),
            _ => None,
        },
    })
}

/// Makes sure the folder of a `sqlite:` file exists and that the file may be created.
fn prepare_sqlite_path(url: &mut String) -> Result<(), StoreError> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Config(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
    }
    if !url.contains("mode=") {
        url.push_str(if url.contains('?') {
            "&mode=rwc"
        } else {
            "?mode=rwc"
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay reads unshipped rows through the partial index, in its order: no scan of the
    /// whole outbox (which keeps shipped rows for `store.outbox_keep_ms`) and no sort.
    #[tokio::test]
    async fn relay_reads_the_partial_index_on_sqlite() {
        let dir = std::env::temp_dir().join(format!("waimai-plan-{}", uuid::Uuid::new_v4()));
        let cfg = StoreConfig {
            url: format!("sqlite://{}/plan.db", dir.display()),
            ..crate::config::Config::defaults().expect("defaults").store
        };
        let store = Store::connect(&cfg, 64).await.expect("connect");
        store.migrate().await.expect("migrate");
        let sql = format!("EXPLAIN QUERY PLAN {}", store.unshipped_sql(2, 100));
        let rows = sqlx::query(&sql)
            .bind(1_i64)
            .bind(2_i64)
            .fetch_all(&store.inner.pool)
            .await
            .expect("plan");
        let plan: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>("detail").expect("detail"))
            .collect();
        assert!(
            plan.iter()
                .any(|d| d.contains("USING INDEX outbox_unshipped")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|d| d.contains("TEMP B-TREE")), "{plan:?}");
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
