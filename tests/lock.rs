//! Leases against a real Redis (and, where the contract is the same, the in-process backend),
//! and the lock actor on top of them.
//!
//! Every Redis test uses its own key prefix, so tests never see each other's keys. Nothing here
//! asserts how long something took: expiry and renewal are observed by polling with a deadline.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Arbiter, Context, Handler, Recipient};
use common::{redis_url, require_redis, unique};
use futures::future::join_all;
use waimai::actors::lock::{AcquireLease, LeaseLost, LockActor, ReleaseLease, RenewNow};
use waimai::lock::{Lease, LocalLocks, LockBackend, LockError, RedisLocks};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// How long any poll may wait before the test gives up.
const PATIENCE: Duration = Duration::from_secs(15);

/// Which lease table a test runs on.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Local,
    Redis,
}

/// Two handles on one lease table, like two nodes: for Redis, two separate connections with the
/// same (test-unique) prefix; for the local backend, two clones of one table.
struct Pair {
    a: LockBackend,
    b: LockBackend,
    /// The Redis key prefix, if Redis.
    prefix: Option<String>,
}

impl Pair {
    async fn new(kind: Kind) -> Pair {
        match kind {
            Kind::Local => {
                let table = LocalLocks::new();
                Pair {
                    a: LockBackend::Local(table.clone()),
                    b: LockBackend::Local(table),
                    prefix: None,
                }
            }
            Kind::Redis => {
                require_redis().await;
                let prefix = format!("waimai-test-{}", unique());
                Pair {
                    a: redis_backend(&prefix).await,
                    b: redis_backend(&prefix).await,
                    prefix: Some(prefix),
                }
            }
        }
    }

    /// Deletes this test's Redis keys (lease and fencing counters).
    async fn cleanup(&self) {
        let Some(prefix) = &self.prefix else { return };
        let mut conn = redis_conn().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .expect("DEL");
        }
    }
}

async fn redis_backend(prefix: &str) -> LockBackend {
    LockBackend::Redis(
        RedisLocks::connect(&redis_url(), prefix)
            .await
            .unwrap_or_else(|e| panic!("Redis is required at {}: {e}", redis_url())),
    )
}

/// A plain Redis connection, to tamper with keys behind the backend's back.
async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url().as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis is required at {}: {e}", redis_url()))
}

/// Polls `probe` every 20 ms until it returns `Some`; panics after `PATIENCE`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn held(key: &str) -> Result<Lease, LockError> {
    Err(LockError::Held(key.to_string()))
}

/// `backend.acquire` must say `Held`.
async fn assert_held(backend: &LockBackend, key: &str, what: &str) {
    let got = backend.acquire(key, 60_000, 0).await;
    assert_eq!(got, held(key), "{what}: the key must still be held");
}

/// Records the `LeaseLost` messages it gets.
struct LostRecorder(Arc<Mutex<Vec<Lease>>>);

impl Actor for LostRecorder {
    type Context = Context<Self>;
}

impl Handler<LeaseLost> for LostRecorder {
    type Result = ();

    fn handle(&mut self, msg: LeaseLost, _: &mut Context<Self>) {
        self.0.lock().expect("recorder lock").push(msg.lease);
    }
}

/// A recorder's recipient and what it has recorded so far.
fn recorder() -> (Recipient<LeaseLost>, Arc<Mutex<Vec<Lease>>>) {
    let lost = Arc::new(Mutex::new(Vec::new()));
    let addr = LostRecorder(lost.clone()).start();
    (addr.recipient(), lost)
}

fn recorded(lost: &Arc<Mutex<Vec<Lease>>>) -> Vec<Lease> {
    lost.lock().expect("recorder lock").clone()
}

async fn acquire_via(
    node: &Addr<LockActor>,
    key: &str,
    floor: i64,
    holder: &Recipient<LeaseLost>,
) -> Result<Lease, LockError> {
    node.send(AcquireLease {
        key: key.to_string(),
        floor,
        holder: holder.clone(),
    })
    .await
    .expect("lock actor mailbox")
}

/// `contract! { check => local_name, redis_name; ... }`: a backend check on both backends.
macro_rules! contract {
    ($($check:ident => $local:ident, $redis:ident;)*) => {
        $(
            #[tokio::test]
            async fn $local() {
                let pair = Pair::new(Kind::Local).await;
                $check(&pair.a, &pair.b).await;
            }

            #[tokio::test]
            async fn $redis() {
                let pair = Pair::new(Kind::Redis).await;
                $check(&pair.a, &pair.b).await;
                pair.cleanup().await;
            }
        )*
    };
}

/// `actor_tests! { check => local_name, redis_name; ... }`: a lock-actor check on both backends,
/// inside an actix system.
macro_rules! actor_tests {
    ($($check:ident => $local:ident, $redis:ident;)*) => {
        $(
            #[actix_rt::test]
            async fn $local() {
                let pair = Pair::new(Kind::Local).await;
                $check(&pair).await;
            }

            #[actix_rt::test]
            async fn $redis() {
                let pair = Pair::new(Kind::Redis).await;
                $check(&pair).await;
                pair.cleanup().await;
            }
        )*
    };
}

contract! {
    check_lease_excludes => local_lease_excludes, redis_lease_excludes;
    check_one_winner_among_concurrent_acquires => local_one_winner_among_concurrent_acquires, redis_one_winner_among_concurrent_acquires;
    check_lease_expires_after_ttl => local_lease_expires_after_ttl, redis_lease_expires_after_ttl;
    check_renewal_keeps_lease => local_renewal_keeps_lease, redis_renewal_keeps_lease;
    check_forged_token_is_powerless => local_forged_token_is_powerless, redis_forged_token_is_powerless;
    check_stale_holder_cannot_release_or_renew => local_stale_holder_cannot_release_or_renew, redis_stale_holder_cannot_release_or_renew;
    check_fences_grow_and_respect_floor => local_fences_grow_and_respect_floor, redis_fences_grow_and_respect_floor;
}

actor_tests! {
    check_actor_grants_exclusively => local_actor_grants_exclusively, redis_actor_grants_exclusively;
    check_two_nodes_never_both_hold => local_two_nodes_never_both_hold, redis_two_nodes_never_both_hold;
    check_actor_renewal_keeps_lease_alive => local_actor_renewal_keeps_lease_alive, redis_actor_renewal_keeps_lease_alive;
}

// ---------------------------------------------------------------------------------------------
// Backend contract
// ---------------------------------------------------------------------------------------------

const KEY: &str = "stock:merchant-1";

/// A live lease keeps everyone else out until it is released; keys are independent.
async fn check_lease_excludes(a: &LockBackend, b: &LockBackend) {
    let lease = a.acquire(KEY, 60_000, 0).await.expect("free key");
    assert_eq!(lease.key, KEY);
    assert_held(b, KEY, "other node").await;
    assert_held(a, KEY, "same node, new token").await;

    // Another key is not affected.
    let other = b
        .acquire("stock:merchant-2", 60_000, 0)
        .await
        .expect("independent key");

    assert_eq!(a.release(&lease).await, Ok(true));
    // Releasing twice does nothing the second time.
    assert_eq!(a.release(&lease).await, Ok(false));
    let next = b.acquire(KEY, 60_000, 0).await.expect("released key");
    assert_ne!(next.token, lease.token);
    assert!(next.fence > lease.fence);
    assert_eq!(b.release(&next).await, Ok(true));
    assert_eq!(b.release(&other).await, Ok(true));
}

/// Of many simultaneous acquires of one free key, exactly one wins.
async fn check_one_winner_among_concurrent_acquires(a: &LockBackend, b: &LockBackend) {
    for round in 0..5 {
        let key = format!("race-{round}");
        let attempts = (0..40).map(|i| {
            let backend = if i % 2 == 0 { a } else { b };
            let key = key.clone();
            async move { backend.acquire(&key, 60_000, 0).await }
        });
        let results = join_all(attempts).await;
        let winners: Vec<&Lease> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert_eq!(e, &LockError::Held(key.clone()));
            }
        }
        assert_eq!(a.release(winners[0]).await, Ok(true));
    }
}

/// A lease that is not renewed runs out, and then someone else gets the key.
async fn check_lease_expires_after_ttl(a: &LockBackend, b: &LockBackend) {
    let ttl = Duration::from_millis(1000);
    let t0 = Instant::now();
    let first = a
        .acquire(KEY, ttl.as_millis() as u64, 0)
        .await
        .expect("free key");
    let second = match b.acquire(KEY, 60_000, 0).await {
        Err(LockError::Held(k)) => {
            assert_eq!(k, KEY);
            eventually("the short lease to expire", || async {
                b.acquire(KEY, 60_000, 0).await.ok()
            })
            .await
        }
        // Only possible if the first lease really had run out already.
        Ok(lease) if t0.elapsed() >= ttl => lease,
        other => panic!("a live lease was granted to a second owner: {other:?}"),
    };
    assert!(
        second.fence > first.fence,
        "fence must grow across an expiry: {} then {}",
        first.fence,
        second.fence
    );
    // The new holder has it now.
    assert_held(a, KEY, "after takeover").await;
    assert_eq!(b.release(&second).await, Ok(true));
}

/// Renewing keeps a short lease alive well past its TTL.
async fn check_renewal_keeps_lease(a: &LockBackend, b: &LockBackend) {
    let ttl = Duration::from_millis(600);
    let t0 = Instant::now();
    let lease = a
        .acquire(KEY, ttl.as_millis() as u64, 0)
        .await
        .expect("free key");
    let mut renewals = 0;
    while t0.elapsed() < ttl * 4 {
        tokio::time::sleep(ttl / 6).await;
        a.renew(&lease, ttl.as_millis() as u64)
            .await
            .unwrap_or_else(|e| panic!("renewal {renewals} of a live lease failed: {e}"));
        renewals += 1;
        assert_held(b, KEY, &format!("after renewal {renewals}")).await;
    }
    assert!(renewals >= 4);
    assert_eq!(a.release(&lease).await, Ok(true));
    let next = b.acquire(KEY, 60_000, 0).await.expect("released key");
    assert!(next.fence > lease.fence);
    assert_eq!(b.release(&next).await, Ok(true));
}

/// A token that never held the key can neither release nor renew it.
async fn check_forged_token_is_powerless(a: &LockBackend, b: &LockBackend) {
    let lease = a.acquire(KEY, 60_000, 0).await.expect("free key");
    let forged = Lease {
        token: "not-the-token".into(),
        ..lease.clone()
    };
    assert_eq!(b.release(&forged).await, Ok(false));
    assert_eq!(
        b.renew(&forged, 60_000).await,
        Err(LockError::Lost(KEY.into()))
    );
    assert_held(b, KEY, "after forged release").await;
    a.renew(&lease, 60_000)
        .await
        .expect("the real holder still renews");
    assert_eq!(a.release(&lease).await, Ok(true));

    // A released lease cannot be renewed either.
    assert_eq!(
        a.renew(&lease, 60_000).await,
        Err(LockError::Lost(KEY.into()))
    );
    // Nor can a token renew a key nobody holds.
    let never = Lease {
        key: "stock:nobody".into(),
        token: "t".into(),
        fence: 1,
    };
    assert_eq!(
        a.renew(&never, 60_000).await,
        Err(LockError::Lost("stock:nobody".into()))
    );
}

/// After a lease expired and someone else took the key, the old holder's token is stale: it
/// can neither release nor renew, and trying does not disturb the new holder.
async fn check_stale_holder_cannot_release_or_renew(a: &LockBackend, b: &LockBackend) {
    let old = a.acquire(KEY, 300, 0).await.expect("free key");
    let new = eventually("the old lease to expire", || async {
        b.acquire(KEY, 60_000, 0).await.ok()
    })
    .await;
    assert!(new.fence > old.fence);

    assert_eq!(a.release(&old).await, Ok(false), "stale release");
    assert_eq!(
        a.renew(&old, 60_000).await,
        Err(LockError::Lost(KEY.into())),
        "stale renewal"
    );
    assert_held(a, KEY, "after the stale holder's attempts").await;
    b.renew(&new, 60_000)
        .await
        .expect("the new holder still renews");
    assert_eq!(b.release(&new).await, Ok(true));
    // Once free, the old holder's token still has no power (it must acquire afresh).
    assert_eq!(
        a.renew(&old, 60_000).await,
        Err(LockError::Lost(KEY.into()))
    );
    let again = a.acquire(KEY, 60_000, 0).await.expect("free key again");
    assert!(again.fence > new.fence);
    assert_eq!(a.release(&again).await, Ok(true));
}

/// Fencing tokens strictly grow across grants (from either node) and respect `floor`.
async fn check_fences_grow_and_respect_floor(a: &LockBackend, b: &LockBackend) {
    let mut last = 0;
    for i in 0..12 {
        let node = if i % 2 == 0 { a } else { b };
        let lease = node.acquire(KEY, 60_000, 0).await.expect("free key");
        assert!(
            lease.fence > last,
            "grant {i}: fence {} after {last}",
            lease.fence
        );
        last = lease.fence;
        assert_eq!(node.release(&lease).await, Ok(true));
    }

    // A floor above the counter lifts it.
    let floor = last + 100;
    let lease = a.acquire(KEY, 60_000, floor).await.expect("free key");
    assert!(
        lease.fence >= floor,
        "fence {} below floor {floor}",
        lease.fence
    );
    last = lease.fence;
    assert_eq!(a.release(&lease).await, Ok(true));

    // A floor at or below the counter never makes it reuse or go back.
    for floor in [last, last - 50, 1, 0, -5] {
        let lease = b.acquire(KEY, 60_000, floor).await.expect("free key");
        assert!(
            lease.fence > last,
            "floor {floor}: fence {} not above {last}",
            lease.fence
        );
        last = lease.fence;
        assert_eq!(b.release(&lease).await, Ok(true));
    }

    // A refused acquire does not hand out anything, and the next grant is still larger.
    let holder = a.acquire(KEY, 60_000, 0).await.expect("free key");
    assert!(holder.fence > last);
    assert_eq!(b.acquire(KEY, 60_000, holder.fence + 1000).await, held(KEY));
    assert_eq!(a.release(&holder).await, Ok(true));
    let after = b.acquire(KEY, 60_000, 0).await.expect("free key");
    assert!(after.fence > holder.fence);
    assert_eq!(b.release(&after).await, Ok(true));
}

// ---------------------------------------------------------------------------------------------
// Lock actor
// ---------------------------------------------------------------------------------------------

/// Through the actor: the second node is refused while the first holds; release frees it; the
/// floor is honoured.
async fn check_actor_grants_exclusively(pair: &Pair) {
    let (holder, lost) = recorder();
    let node_a = LockActor::new(pair.a.clone(), Duration::from_secs(10)).start();
    let node_b = LockActor::new(pair.b.clone(), Duration::from_secs(10)).start();

    let lease = acquire_via(&node_a, KEY, 0, &holder)
        .await
        .expect("free key");
    assert_eq!(acquire_via(&node_b, KEY, 0, &holder).await, held(KEY));
    assert_eq!(acquire_via(&node_a, KEY, 0, &holder).await, held(KEY));

    node_a
        .send(ReleaseLease(lease.clone()))
        .await
        .expect("mailbox");
    let floor = lease.fence + 500;
    let next = acquire_via(&node_b, KEY, floor, &holder)
        .await
        .expect("released key");
    assert!(
        next.fence >= floor,
        "fence {} below floor {floor}",
        next.fence
    );

    // A stale release through the other node does not free the key.
    node_a.send(ReleaseLease(lease)).await.expect("mailbox");
    assert_held(&pair.a, KEY, "after a stale release").await;

    node_b.send(ReleaseLease(next)).await.expect("mailbox");
    let last = pair.a.acquire(KEY, 60_000, 0).await.expect("free key");
    assert_eq!(pair.a.release(&last).await, Ok(true));
    assert!(recorded(&lost).is_empty(), "{:?}", recorded(&lost));
}

/// Two nodes, each its own lock actor (node B on its own thread) and its own connection, with
/// many tasks each contending for one key: never two holders at once, and every grant's fence
/// is above the previous holder's.
async fn check_two_nodes_never_both_hold(pair: &Pair) {
    const WORKERS: usize = 12;
    const HOLDS: usize = 8;
    let (holder, lost) = recorder();
    let node_a = LockActor::new(pair.a.clone(), Duration::from_secs(10)).start();
    let arbiter = Arbiter::new();
    let backend_b = pair.b.clone();
    let node_b = LockActor::start_in_arbiter(&arbiter.handle(), move |_| {
        LockActor::new(backend_b, Duration::from_secs(10))
    });

    let holders = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(AtomicUsize::new(0));
    let refusals = Arc::new(AtomicUsize::new(0));
    let last_fence = Arc::new(Mutex::new(0i64));
    let workers = (0..WORKERS).map(|w| {
        let node = if w % 2 == 0 {
            node_a.clone()
        } else {
            node_b.clone()
        };
        let (holder, holders, grants, refusals, last_fence) = (
            holder.clone(),
            holders.clone(),
            grants.clone(),
            refusals.clone(),
            last_fence.clone(),
        );
        async move {
            let deadline = Instant::now() + PATIENCE * 2;
            let mut mine = 0;
            while mine < HOLDS {
                assert!(
                    Instant::now() < deadline,
                    "worker {w} starved after {mine} holds"
                );
                match acquire_via(&node, KEY, 0, &holder).await {
                    Ok(lease) => {
                        let before = holders.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(before, 0, "worker {w} got {lease:?} while someone held it");
                        {
                            let mut last = last_fence.lock().unwrap();
                            assert!(
                                lease.fence > *last,
                                "fence {} not above the previous holder's {}",
                                lease.fence,
                                *last
                            );
                            *last = lease.fence;
                        }
                        // Hold it across a few scheduling points while the others keep trying.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        assert_eq!(holders.load(Ordering::SeqCst), 1);
                        holders.fetch_sub(1, Ordering::SeqCst);
                        node.send(ReleaseLease(lease)).await.expect("mailbox");
                        grants.fetch_add(1, Ordering::SeqCst);
                        mine += 1;
                    }
                    Err(LockError::Held(k)) => {
                        assert_eq!(k, KEY);
                        refusals.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => panic!("worker {w}: {e}"),
                }
            }
        }
    });
    join_all(workers).await;

    assert_eq!(grants.load(Ordering::SeqCst), WORKERS * HOLDS);
    assert!(
        refusals.load(Ordering::SeqCst) > 0,
        "the workers never actually contended"
    );
    assert!(recorded(&lost).is_empty(), "{:?}", recorded(&lost));
    // Everything was released.
    let last = pair.a.acquire(KEY, 60_000, 0).await.expect("free key");
    assert!(last.fence > *last_fence.lock().unwrap());
    assert_eq!(pair.a.release(&last).await, Ok(true));
    arbiter.stop();
}

/// The actor renews a 300 ms lease in the background: more than a second later nobody else can
/// take it, and the holder was never told it was lost.
async fn check_actor_renewal_keeps_lease_alive(pair: &Pair) {
    let ttl = Duration::from_millis(300);
    let (holder, lost) = recorder();
    let node = LockActor::new(pair.a.clone(), ttl).start();
    let t0 = Instant::now();
    let lease = acquire_via(&node, KEY, 0, &holder).await.expect("free key");
    let mut probes = 0;
    while t0.elapsed() < ttl * 4 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        probes += 1;
        assert_held(&pair.b, KEY, &format!("probe {probes}")).await;
    }
    assert!(recorded(&lost).is_empty(), "{:?}", recorded(&lost));

    node.send(ReleaseLease(lease.clone()))
        .await
        .expect("mailbox");
    let next = pair
        .b
        .acquire(KEY, 60_000, 0)
        .await
        .expect("free after release");
    assert!(next.fence > lease.fence);
    // The released lease is no longer renewed: the new holder keeps the key.
    node.send(RenewNow).await.expect("mailbox");
    assert_held(&pair.a, KEY, "after RenewNow on the old node").await;
    assert_eq!(pair.b.release(&next).await, Ok(true));
    assert!(recorded(&lost).is_empty(), "{:?}", recorded(&lost));
}

/// Deletes a lease key behind the backend's back, as an expiry or a Redis failover would.
async fn steal(prefix: &str, key: &str) {
    let mut conn = redis_conn().await;
    let deleted: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}:lock:{key}"))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    assert_eq!(deleted, 1, "the lease key {prefix}:lock:{key} should exist");
}

/// When another node takes over a lease (its key vanished and someone else acquired it), the
/// next renewal (`RenewNow`) tells the holder with `LeaseLost`, exactly once, and the stale
/// holder disturbs nothing.
#[actix_rt::test]
async fn redis_stolen_lease_notifies_holder_on_renew_now() {
    let pair = Pair::new(Kind::Redis).await;
    let prefix = pair.prefix.clone().expect("redis prefix");
    let (holder, lost) = recorder();
    // Long TTL: the timer stays out of the way; renewal happens when asked.
    let node_a = LockActor::new(pair.a.clone(), Duration::from_secs(30)).start();
    let node_b = LockActor::new(pair.b.clone(), Duration::from_secs(30)).start();
    let (holder_b, lost_b) = recorder();

    let lease = acquire_via(&node_a, KEY, 0, &holder)
        .await
        .expect("free key");
    node_a.send(RenewNow).await.expect("mailbox");
    steal(&prefix, KEY).await;
    let thief = acquire_via(&node_b, KEY, 0, &holder_b)
        .await
        .expect("the key was freed");
    assert!(thief.fence > lease.fence);

    node_a.send(RenewNow).await.expect("mailbox");
    let got = eventually("LeaseLost after RenewNow", || async {
        let got = recorded(&lost);
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(got, vec![lease.clone()]);

    // The failed renewal and a stale release leave the new holder alone.
    assert_held(&pair.a, KEY, "after the lost renewal").await;
    node_a
        .send(ReleaseLease(lease.clone()))
        .await
        .expect("mailbox");
    assert_held(&pair.a, KEY, "after the stale release").await;
    pair.b
        .renew(&thief, 60_000)
        .await
        .expect("the new holder renews");

    // The lost lease is forgotten: renewing again reports nothing more. (With nothing held,
    // RenewNow has no background work left once it has been handled.)
    node_a.send(RenewNow).await.expect("mailbox");
    node_b.send(RenewNow).await.expect("mailbox");
    assert_eq!(recorded(&lost), vec![lease]);
    assert!(recorded(&lost_b).is_empty(), "{:?}", recorded(&lost_b));

    node_b.send(ReleaseLease(thief)).await.expect("mailbox");
    let last = pair.a.acquire(KEY, 60_000, 0).await.expect("free key");
    assert_eq!(pair.a.release(&last).await, Ok(true));
    pair.cleanup().await;
}

/// The same, but found by the actor's own renewal timer.
#[actix_rt::test]
async fn redis_stolen_lease_notifies_holder_by_timer() {
    let pair = Pair::new(Kind::Redis).await;
    let prefix = pair.prefix.clone().expect("redis prefix");
    let (holder, lost) = recorder();
    let node_a = LockActor::new(pair.a.clone(), Duration::from_millis(300)).start();

    let lease = acquire_via(&node_a, KEY, 0, &holder)
        .await
        .expect("free key");
    steal(&prefix, KEY).await;
    let thief = pair
        .b
        .acquire(KEY, 60_000, 0)
        .await
        .expect("the key was freed");
    assert!(thief.fence > lease.fence);

    let got = eventually("LeaseLost from the renewal timer", || async {
        let got = recorded(&lost);
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(got, vec![lease]);
    assert_held(&pair.a, KEY, "after the lost renewal").await;
    assert_eq!(pair.b.release(&thief).await, Ok(true));
    pair.cleanup().await;
}

/// An expired lease (the holder's node stalled past the TTL without renewing) is reported lost
/// even when nobody took the key yet: the holder may no longer trust its fence.
#[actix_rt::test]
async fn redis_expired_lease_is_reported_lost() {
    let pair = Pair::new(Kind::Redis).await;
    let prefix = pair.prefix.clone().expect("redis prefix");
    let (holder, lost) = recorder();
    let node_a = LockActor::new(pair.a.clone(), Duration::from_secs(30)).start();
    let lease = acquire_via(&node_a, KEY, 0, &holder)
        .await
        .expect("free key");
    steal(&prefix, KEY).await;
    node_a.send(RenewNow).await.expect("mailbox");
    let got = eventually("LeaseLost for a vanished key", || async {
        let got = recorded(&lost);
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(got, vec![lease.clone()]);
    // The renewal did not resurrect the key: it is free.
    let next = pair.b.acquire(KEY, 60_000, 0).await.expect("free key");
    assert!(next.fence > lease.fence);
    assert_eq!(pair.b.release(&next).await, Ok(true));
    pair.cleanup().await;
}
