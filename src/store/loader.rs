//! Coalesces concurrent order reads. Every new order actor reads its row before its first
//! message (to find a replayed create); under load thousands do so each second, and one
//! statement each meant one hop to the database (for SQLite, a wake-up of a connection's worker
//! thread) per order. The loader takes what is queued and asks for it with one
//! `WHERE id IN (..)` statement per chunk, then answers each caller.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::writer::{chunk_sizes, take_batch};
use super::{dialect, order_from_row, Backend, StoreError, ORDER_COLUMNS};
use crate::model::Order;

/// One queued read.
pub(super) struct Load {
    /// The order's id.
    pub id: String,
    /// Receives the row (or `None`).
    pub reply: oneshot::Sender<Loaded>,
}

/// Most ids asked for in one round.
const ROUND_MAX: usize = 256;

/// Runs until every sender is gone.
pub(super) async fn run(pool: AnyPool, backend: Backend, rx: Arc<Mutex<mpsc::Receiver<Load>>>) {
    loop {
        let Some(round) = take_batch(&mut *rx.lock().await, ROUND_MAX).await else {
            return;
        };
        answer(&pool, backend, round).await;
    }
}

/// Reads every id of a round (each once) and answers the callers.
async fn answer(pool: &AnyPool, backend: Backend, round: Vec<Load>) {
    let mut waiting: HashMap<String, Vec<oneshot::Sender<Loaded>>> = HashMap::new();
    for load in round {
        waiting.entry(load.id).or_default().push(load.reply);
    }
    let ids: Vec<String> = waiting.keys().cloned().collect();
    let mut rest = &ids[..];
    for n in chunk_sizes(ids.len()) {
        let (now, later) = rest.split_at(n);
        rest = later;
        let found = fetch(pool, backend, now).await;
        for id in now {
            for reply in waiting.remove(id).unwrap_or_default() {
                let outcome = match &found {
                    Ok(rows) => match rows.get(id) {
                        None => Ok(None),
                        Some(Ok(order)) => Ok(Some(order.clone())),
                        Some(Err(why)) => Err(StoreError::Corrupt(why.clone())),
                    },
                    Err(e) => Err(StoreError::Database(sqlx::Error::Protocol(e.to_string()))),
                };
                let _ = reply.send(outcome);
            }
        }
    }
}

/// What a caller gets.
type Loaded = Result<Option<Order>, StoreError>;

/// The rows of `ids` that exist, by id; a row that does not decode is an error for its id
/// only.
async fn fetch(
    pool: &AnyPool,
    backend: Backend,
    ids: &[String],
) -> Result<HashMap<String, Result<Order, String>>, sqlx::Error> {
    let marks = vec!["?"; ids.len()].join(", ");
    let sql = dialect(
        backend,
        &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id IN ({marks})"),
    );
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(id);
    }
    let rows = q.fetch_all(pool).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in &rows {
        match order_from_row(row) {
            Ok(order) => {
                out.insert(order.id.clone(), Ok(order));
            }
            Err(e) => {
                if let Ok(id) = sqlx::Row::try_get::<String, _>(row, "id") {
                    out.insert(id, Err(e.to_string()));
                }
            }
        }
    }
    Ok(out)
}
