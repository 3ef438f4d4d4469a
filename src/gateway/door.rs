//! The door: at most `gateway.door.creates_in_flight` order creations inside the node at once;
//! later ones wait at the door, and go in in the order they came (tokio's semaphore is fair).
//!
//! Past a point, more creates inside the node only lengthen its queues (the shards', the
//! merchants', the store writer's) and cost it more per order. In an open-model run at
//! 11,500/s, a node that fell briefly behind let every create in, went from about 1,000 to
//! 10,000 in flight, and never caught up (p99 about 2 s); with the door at 1,024 it held (p99
//! 76-103 ms). Nothing waiting here has been accepted, so a client that gives up loses
//! nothing, and the wait counts in the request's own time.
//!
//! Only creates go through it: they are the one write whose arrivals nothing bounds. Every
//! other write acts on an order, merchant or rider that exists, so those in flight are bounded
//! by the open orders, and in the runs measured they never piled up.

use std::time::Instant;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::metrics;

/// One node's door for creates.
#[derive(Debug)]
pub struct Door {
    /// `None`: no limit.
    slots: Option<Semaphore>,
}

/// A create's turn inside the node: held until its answer is ready.
#[derive(Debug)]
pub struct Turn<'a> {
    _permit: Option<SemaphorePermit<'a>>,
}

impl Door {
    /// A door letting `in_flight` creates in at once (0: no limit).
    pub fn new(in_flight: usize) -> Self {
        Door {
            slots: (in_flight > 0).then(|| Semaphore::new(in_flight)),
        }
    }

    /// Waits for a turn, behind every create that came earlier.
    pub async fn enter(&self) -> Turn<'_> {
        let Some(slots) = &self.slots else {
            return Turn { _permit: None };
        };
        if let Ok(p) = slots.try_acquire() {
            return Turn { _permit: Some(p) };
        }
        // Counted while it waits, and its wait timed however it ends (a client that hangs up
        // drops this future).
        let _waiting = Waiting::new();
        Turn {
            // The semaphore is never closed.
            _permit: slots.acquire().await.ok(),
        }
    }
}

/// One create waiting at the door: in `waimai_door_waiting` while it lives, and its wait in
/// `waimai_door_wait_seconds` when it ends, with a turn or given up.
struct Waiting {
    started: Instant,
}

impl Waiting {
    fn new() -> Self {
        metrics::DOOR_WAITING.inc();
        Waiting {
            started: Instant::now(),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::DOOR_WAITING.dec();
        metrics::DOOR_WAIT_SECONDS.observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn creates_past_the_limit_wait_and_go_in_in_arrival_order() {
        let door = Arc::new(Door::new(2));
        let first = door.enter().await;
        let second = door.enter().await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let (release_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut waiters = Vec::new();
        for i in 0..5 {
            let door = door.clone();
            let order = order.clone();
            let mut release = release_tx.subscribe();
            waiters.push(tokio::spawn(async move {
                let _turn = door.enter().await;
                order.lock().unwrap().push(i);
                let _ = release.recv().await;
            }));
            // Each waiter queues before the next one is spawned.
            tokio::task::yield_now().await;
        }
        assert!(
            order.lock().unwrap().is_empty(),
            "none got in past the limit"
        );
        drop(first);
        tokio::task::yield_now().await;
        assert_eq!(
            *order.lock().unwrap(),
            vec![0],
            "the earliest waiter goes first"
        );
        drop(second);
        let _ = release_tx.send(());
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4], "arrival order");
    }

    #[tokio::test]
    async fn a_wait_at_the_door_is_measured_once_the_turn_comes() {
        let door = Arc::new(Door::new(1));
        let held = door.enter().await;
        // The histogram is process-wide and other tests may add to it: only deltas count.
        let (count0, sum0) = (
            metrics::DOOR_WAIT_SECONDS.get_sample_count(),
            metrics::DOOR_WAIT_SECONDS.get_sample_sum(),
        );
        let waiter = {
            let door = door.clone();
            tokio::spawn(async move {
                let _turn = door.enter().await;
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "no turn while the only slot is held");
        drop(held);
        waiter.await.unwrap();
        assert!(metrics::DOOR_WAIT_SECONDS.get_sample_count() > count0);
        assert!(
            metrics::DOOR_WAIT_SECONDS.get_sample_sum() - sum0 >= 0.045,
            "the wait covers the 50 ms the slot was held"
        );
    }

    #[tokio::test]
    async fn a_door_of_zero_lets_everything_in() {
        let door = Door::new(0);
        // A door with no slot at all would never let one in: the timeout makes that a failure.
        let turns: Vec<Turn<'_>> = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            futures::future::join_all((0..1000).map(|_| door.enter())),
        )
        .await
        .expect("1,000 turns at once, none waits");
        assert_eq!(turns.len(), 1000);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_frees_its_place() {
        let door = Door::new(1);
        let held = door.enter().await;
        // Process-wide; other tests add to it too, so only a floor.
        let sum0 = metrics::DOOR_WAIT_SECONDS.get_sample_sum();
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(20), door.enter()).await;
        assert!(gave_up.is_err(), "no turn while the only slot is held");
        assert!(
            metrics::DOOR_WAIT_SECONDS.get_sample_sum() - sum0 >= 0.015,
            "a wait given up is timed too"
        );
        drop(held);
        let _next = tokio::time::timeout(std::time::Duration::from_secs(5), door.enter())
            .await
            .expect("the slot is free again");
    }
}
