//! Persistence over sqlx's `Any` driver: SQLite (embedded default), PostgreSQL and MySQL/MariaDB.
//!
//! Order reads are coalesced by the loader (`loader.rs`); other reads go straight to the pool.
//! Writes are `WriteSet`s — the statements of one state change plus its outbox event — that the
//! group-commit writers (`writer.rs`), one queue each, partitioned by merchant, apply many to a
//! transaction: in bulk first, and one savepoint per change if anything in the bulk attempt
//! fails, so one conflicting change never sinks its batch neighbours. Writers and loaders run on
//! a thread of their own (`waimai-store`).
//! Every update checks a version (`WHERE id = ? AND version = ?`) and every stock write a fencing
//! token (`WHERE fence <= ?`).

mod loader;
mod schema;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use tokio::sync::{mpsc, oneshot};

use crate::actors::order_machine::OrderStatus;
use crate::config::StoreConfig;
use crate::domain::Location;
use crate::model::{MenuItem, Merchant, Order, OutboxEvent, OutboxRow, Rider};

pub use writer::Write;

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
    /// The database said no.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Columns of an order row, in `order_from_row`'s terms.
const ORDER_COLUMNS: &str = "id, customer_id, merchant_id, rider_id, status, items, total_cents, \
     deliver_lat, deliver_lng, request_hash, version, created_at, updated_at";

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
}

impl Store {
    /// Connects, creating the SQLite file's folder if needed, and starts the group-commit writers.
    pub async fn connect(cfg: &StoreConfig) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(&cfg.url)?;
        let mut url = cfg.url.clone();
        if backend == Backend::Sqlite {
            prepare_sqlite_path(&mut url)?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(cfg.max_connections.max(2))
            .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        // A bigger page cache (32 MiB, grown only as used) and the first
                        // 64 MiB of the file memory-mapped: without them the writer re-read
                        // and spilled pages through read()/write() calls on every batch (seen
                        // in perf as pread/pagerStress). The map is kept small because mapped
                        // pages count in the node's RSS (a full map showed the whole database
                        // file there once reads had touched it).
                        conn.execute("PRAGMA cache_size = -32768").await?;
                        conn.execute("PRAGMA mmap_size = 67108864").await?;
                        // Statement journals (multi-row statements inside a transaction) in
                        // memory rather than temp files (`subjournalPageIfRequired` was 4.6% of
                        // the writer's profile), and checkpoints every 16 MiB of WAL instead of
                        // 4 MiB: hot index pages are written back once per checkpoint, not once
                        // per 4 MiB.
                        conn.execute("PRAGMA temp_store = MEMORY").await?;
                        conn.execute("PRAGMA wal_autocheckpoint = 4000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
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
        // The writers and loaders get a thread of their own. On the node's shared runtime each
        // statement's completion waited in the run queue behind hundreds of HTTP tasks, and a
        // batch is a chain of statements: under load the writer spent most of its time
        // waiting to be polled, not writing. Here it is polled as soon as its statement is done.
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
                    let writers = receivers
                        .into_iter()
                        .map(|rx| writer::run(store_pool.clone(), backend, rx, batch_max));
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
            }),
        })
    }

    /// The dialect in use.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Applies the schema; idempotent.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        for stmt in schema::migrations(self.inner.backend) {
            self.inner.pool.execute(*stmt).await?;
        }
        Ok(())
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
        Ok(())
    }

    /// Applies one change atomically, batched with others (group commit). Returns once durable.
    pub async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let sender = {
            let queues = self.inner.writer.lock().map_err(|_| StoreError::Closed)?;
            let queues = queues.as_ref().ok_or(StoreError::Closed)?;
            let key = writes.iter().find_map(Write::partition).unwrap_or("");
            let i = crate::cluster::shard_of(key, queues.len() as u32) as usize;
            queues.get(i).ok_or(StoreError::Closed)?.clone()
        };
        let (reply, rx) = oneshot::channel();
        sender
            .send(writer::Job { writes, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
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
        let sql =
            self.sql("SELECT id, name, lat, lng, is_open, version FROM merchants WHERE id = ?");
        let Some(r) = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await?
        else {
            return Ok(None);
        };
        let merchant = Merchant {
            id: r.try_get("id")?,
            name: text(&r, "name")?,
            location: Location {
                lat: r.try_get("lat")?,
                lng: r.try_get("lng")?,
            },
            open: r.try_get::<i64, _>("is_open")? != 0,
            version: r.try_get("version")?,
        };
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

    /// The outbox events of one aggregate, oldest first.
    pub async fn outbox_for(&self, aggregate_id: &str) -> Result<Vec<OutboxRow>, StoreError> {
        let sql = self.sql(
            "SELECT seq, aggregate_type, aggregate_id, event_type, payload, created_at FROM outbox \
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
                        payload: serde_json::from_str(&payload)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        created_at: r.try_get("created_at")?,
                    },
                })
            })
            .collect()
    }

    /// Rewrites `?` placeholders for the backend (PostgreSQL wants `$1, $2, ...`).
    fn sql(&self, sql: &str) -> String {
        dialect(self.inner.backend, sql)
    }
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
