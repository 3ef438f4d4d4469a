//! Load models. Closed: `n` virtual users, each running iterations back to back (the node's
//! pace sets the rate). Open: iterations arrive on a fixed schedule whatever the node does, and
//! each is handed its *intended* start so latency includes any queueing behind a slow node
//! (no coordinated omission, as in wrk2 and oha).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::Load;

/// One iteration to run: its sequence number and its intended start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Iteration {
    /// 0, 1, 2, ... across the run.
    pub seq: u64,
    /// When it was meant to start (closed: when it did start).
    pub intended: Instant,
}

/// How a drive ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Driven {
    /// Iterations started.
    pub started: u64,
    /// Iterations still running when the drain deadline passed (they were aborted).
    pub abandoned: u64,
    /// When the last iteration finished (or the drain gave up).
    pub finished_at: Instant,
}

/// Runs iterations of `f` under `load` until `until` (no new iteration starts after it) or
/// until `limit` iterations have started, then waits up to `drain` for those in flight. The
/// open model's schedule starts at `start` (arrivals already due start at once, late, and the
/// lateness counts in their latency).
pub(crate) async fn drive<F, Fut>(
    load: Load,
    start: Instant,
    until: Instant,
    limit: Option<u64>,
    drain: Duration,
    f: F,
) -> Driven
where
    F: Fn(Iteration) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicU64::new(0));
    let limit = limit.unwrap_or(u64::MAX);
    let mut tasks = JoinSet::new();
    match load {
        Load::Closed(users) => {
            for _ in 0..users {
                let f = f.clone();
                let next = next.clone();
                tasks.spawn(async move {
                    loop {
                        let intended = Instant::now();
                        if intended >= until {
                            break;
                        }
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        if seq >= limit {
                            break;
                        }
                        f(Iteration { seq, intended }).await;
                    }
                });
            }
        }
        Load::Open {
            rate,
            max_in_flight,
        } => {
            let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
            let origin = start;
            let mut seq = 0u64;
            while seq < limit {
                let intended = origin + Duration::from_secs_f64(seq as f64 / rate);
                if intended >= until {
                    break;
                }
                tokio::time::sleep_until(intended.into()).await;
                // Waiting for a slot delays the iteration, and the delay counts in its latency.
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let f = f.clone();
                tasks.spawn(async move {
                    f(Iteration { seq, intended }).await;
                    drop(permit);
                });
                seq += 1;
                // Reap finished tasks so the set does not grow with the run.
                while tasks.try_join_next().is_some() {}
            }
            next.store(seq, Ordering::Relaxed);
        }
    }
    let deadline = tokio::time::Instant::from_std(until.max(Instant::now()) + drain);
    let mut abandoned = 0;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                abandoned = tasks.len() as u64;
                tasks.abort_all();
                break;
            }
        }
    }
    let started = next.load(Ordering::Relaxed).min(limit);
    Driven {
        started,
        abandoned,
        finished_at: Instant::now(),
    }
}
