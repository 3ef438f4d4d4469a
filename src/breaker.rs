//! Circuit breakers around the dependencies that can fail (Redis, the store, the payment
//! provider, Kafka): after `failures` consecutive failures or timeouts a breaker *opens* and refuses
//! calls at once for `cooldown`; then it lets one probe through (*half-open*): a success closes
//! it, a failure opens it again. `waimai_breaker_state{dependency}` is 0 closed, 1 open,
//! 2 half-open.
//!
//! A small module rather than a crate: the breaker crates we looked at (`failsafe`,
//! `recloser`) wrap futures in their own policy types and backoff builders, while waimai needs
//! three counters, one timeout and a gauge, and the open breaker's reason in a 503.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerConfig;
use crate::metrics;

/// A breaker's settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive failures that open it.
    pub failures: u32,
    /// How long it stays open before a probe.
    pub cooldown: Duration,
    /// Longest a guarded call may take (a timeout counts as a failure); `None` = no timeout.
    pub timeout: Option<Duration>,
}

impl BreakerSettings {
    /// From `gateway.breaker`.
    pub fn from_config(c: &BreakerConfig) -> Self {
        BreakerSettings {
            failures: c.failures.max(1),
            cooldown: Duration::from_millis(c.cooldown_ms),
            timeout: (c.timeout_ms > 0).then(|| Duration::from_millis(c.timeout_ms)),
        }
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            cooldown: Duration::from_secs(2),
            timeout: Some(Duration::from_secs(2)),
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe is in flight; other calls are refused.
    HalfOpen,
}

impl BreakerState {
    fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// Why a guarded call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker is open: the call was not made.
    #[error("{dependency} circuit is open after {failures} consecutive failures (last: {last}); retrying in {retry_in_ms} ms")]
    Open {
        /// The dependency.
        dependency: &'static str,
        /// How many failures opened it.
        failures: u32,
        /// The last failure.
        last: String,
        /// Until the next probe.
        retry_in_ms: u64,
    },
    /// The call took longer than the timeout.
    #[error("{dependency} did not answer within {timeout_ms} ms")]
    Timeout {
        /// The dependency.
        dependency: &'static str,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The call failed.
    #[error(transparent)]
    Inner(E),
}

struct State {
    state: BreakerState,
    /// Consecutive failures while closed.
    failures: u32,
    /// When the open breaker lets a probe through.
    until: Instant,
    /// The last failure, for the refusal's reason.
    last: String,
}

/// A circuit breaker for one dependency. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Breaker {
    name: &'static str,
    settings: BreakerSettings,
    state: Arc<Mutex<State>>,
}

/// One admitted call whose outcome is reported later ([`Breaker::pass`]).
pub struct Pass {
    breaker: Option<Breaker>,
    probe: bool,
}

impl Pass {
    /// Reports the call's outcome (`why` describes a failure).
    pub fn done(mut self, ok: bool, why: impl FnOnce() -> String) {
        if let Some(b) = self.breaker.take() {
            b.record(ok, self.probe, why);
        }
    }
}

impl Drop for Pass {
    /// A probe dropped without an outcome counts as failed, so a half-open breaker is never
    /// left waiting for it; an ordinary pass dropped so reports nothing.
    fn drop(&mut self) {
        if let (Some(b), true) = (self.breaker.take(), self.probe) {
            b.record(false, true, || "the probe was abandoned".into());
        }
    }
}

/// What `admit` decided.
enum Admit {
    /// Closed: call.
    Call,
    /// The probe of a half-open breaker.
    Probe,
}

impl Breaker {
    /// A closed breaker for `name` (the `dependency` label).
    pub fn new(name: &'static str, settings: BreakerSettings) -> Self {
        metrics::BREAKER_STATE.with_label_values(&[name]).set(0);
        Breaker {
            name,
            settings,
            state: Arc::new(Mutex::new(State {
                state: BreakerState::Closed,
                failures: 0,
                until: Instant::now(),
                last: String::new(),
            })),
        }
    }

    /// The dependency's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Where it stands now (an open breaker whose cool-down ended reads as half-open).
    pub fn state(&self) -> BreakerState {
        match self.state.lock() {
            Ok(s) if s.state == BreakerState::Open && Instant::now() >= s.until => {
                BreakerState::HalfOpen
            }
            Ok(s) => s.state,
            Err(_) => BreakerState::Closed,
        }
    }

    fn set(&self, s: &mut State, to: BreakerState) {
        if s.state != to {
            tracing::warn!(dependency = self.name, from = ?s.state, to = ?to, last = %s.last, "circuit breaker");
        }
        s.state = to;
        metrics::BREAKER_STATE
            .with_label_values(&[self.name])
            .set(to.gauge());
    }

    fn admit<E>(&self) -> Result<Admit, BreakerError<E>> {
        let Ok(mut s) = self.state.lock() else {
            return Ok(Admit::Call);
        };
        let now = Instant::now();
        match s.state {
            BreakerState::Closed => Ok(Admit::Call),
            BreakerState::Open if now >= s.until => {
                self.set(&mut s, BreakerState::HalfOpen);
                Ok(Admit::Probe)
            }
            BreakerState::Open | BreakerState::HalfOpen => {
                metrics::BREAKER_REJECTED
                    .with_label_values(&[self.name])
                    .inc();
                Err(BreakerError::Open {
                    dependency: self.name,
                    failures: self.settings.failures,
                    last: s.last.clone(),
                    retry_in_ms: s.until.saturating_duration_since(now).as_millis() as u64,
                })
            }
        }
    }

    /// Records the outcome of a call that went through.
    fn record(&self, ok: bool, probe: bool, why: impl FnOnce() -> String) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if ok {
            s.failures = 0;
            if s.state != BreakerState::Closed {
                self.set(&mut s, BreakerState::Closed);
            }
            return;
        }
        s.last = why();
        s.failures = s.failures.saturating_add(1);
        // A failed probe, or the n-th failure in a row, opens it (again). A failure of a call
        // admitted while closed but finishing after the breaker opened changes nothing more.
        if probe || (s.state == BreakerState::Closed && s.failures >= self.settings.failures) {
            s.until = Instant::now() + self.settings.cooldown;
            self.set(&mut s, BreakerState::Open);
        }
    }

    /// Admits one call whose outcome is known later, elsewhere (a produced message's delivery):
    /// refused at once while open; report the outcome with [`Pass::done`]. No timeout is
    /// applied: the caller bounds the call itself.
    pub fn pass<E>(&self) -> Result<Pass, BreakerError<E>> {
        let probe = matches!(self.admit()?, Admit::Probe);
        Ok(Pass {
            breaker: Some(self.clone()),
            probe,
        })
    }

    /// Runs `call` through the breaker: refused at once while open, with the timeout applied.
    /// `is_failure` says which of its errors count against the dependency (a refusal of the
    /// request itself, such as a held lease, does not).
    pub async fn call<T, E, F>(
        &self,
        call: F,
        is_failure: impl FnOnce(&E) -> bool,
    ) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let probe = matches!(self.admit()?, Admit::Probe);
        let out = match self.settings.timeout {
            Some(t) => match tokio::time::timeout(t, call).await {
                Ok(r) => r,
                Err(_) => {
                    let ms = t.as_millis() as u64;
                    self.record(false, probe, || format!("timed out after {ms} ms"));
                    return Err(BreakerError::Timeout {
                        dependency: self.name,
                        timeout_ms: ms,
                    });
                }
            },
            None => call.await,
        };
        match out {
            Ok(v) => {
                self.record(true, probe, String::new);
                Ok(v)
            }
            Err(e) => {
                if is_failure(&e) {
                    self.record(false, probe, || e.to_string());
                } else {
                    // The dependency answered: it is up.
                    self.record(true, probe, String::new);
                }
                Err(BreakerError::Inner(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, cooldown_ms: u64) -> Breaker {
        Breaker::new(
            "test",
            BreakerSettings {
                failures,
                cooldown: Duration::from_millis(cooldown_ms),
                timeout: Some(Duration::from_millis(50)),
            },
        )
    }

    async fn fail(b: &Breaker) -> Result<(), BreakerError<String>> {
        b.call(async { Err::<(), _>("down".to_string()) }, |_| true)
            .await
    }

    async fn succeed(b: &Breaker) -> Result<(), BreakerError<String>> {
        b.call(async { Ok::<(), String>(()) }, |_| true).await
    }

    #[tokio::test(start_paused = true)]
    async fn passes_report_late_and_a_half_open_breaker_admits_one_probe() {
        let b = breaker(2, 1000);
        // Outcomes reported after the fact count like calls.
        let passes: Vec<Pass> = (0..3)
            .map(|_| b.pass::<String>().expect("closed"))
            .collect();
        for p in passes {
            p.done(false, || "no ack".into());
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.pass::<String>(), Err(BreakerError::Open { .. })));
        tokio::time::advance(Duration::from_millis(1001)).await;
        let probe = b.pass::<String>().expect("the probe");
        assert!(
            b.pass::<String>().is_err(),
            "a second call while the probe is out"
        );
        probe.done(true, String::new);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.pass::<String>().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_n_consecutive_failures_and_refuses_without_calling() {
        let b = breaker(3, 1000);
        for _ in 0..2 {
            assert!(matches!(fail(&b).await, Err(BreakerError::Inner(_))));
        }
        // A success in between resets the count.
        succeed(&b).await.expect("closed");
        for _ in 0..3 {
            assert!(matches!(fail(&b).await, Err(BreakerError::Inner(_))));
        }
        assert_eq!(b.state(), BreakerState::Open);
        let called = std::sync::atomic::AtomicBool::new(false);
        let out = b
            .call(
                async {
                    called.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok::<(), String>(())
                },
                |_| true,
            )
            .await;
        match out {
            Err(BreakerError::Open { last, .. }) => assert_eq!(last, "down"),
            other => panic!("expected open, got {other:?}"),
        }
        assert!(!called.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probe_closes_on_success_and_reopens_on_failure() {
        let b = breaker(1, 1000);
        let _ = fail(&b).await;
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // The probe fails: open again for a whole cool-down.
        assert!(matches!(fail(&b).await, Err(BreakerError::Inner(_))));
        assert!(matches!(succeed(&b).await, Err(BreakerError::Open { .. })));
        tokio::time::advance(Duration::from_millis(1001)).await;
        succeed(&b).await.expect("probe succeeds");
        assert_eq!(b.state(), BreakerState::Closed);
        succeed(&b).await.expect("closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_counts_and_a_refusal_of_the_request_does_not() {
        let b = breaker(2, 1000);
        let slow = b
            .call(
                async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok::<(), String>(())
                },
                |_| true,
            )
            .await;
        assert!(matches!(slow, Err(BreakerError::Timeout { .. })));
        // "held by another owner" is the dependency answering: not a failure.
        let refused = b
            .call(async { Err::<(), _>("held".to_string()) }, |_| false)
            .await;
        assert!(matches!(refused, Err(BreakerError::Inner(_))));
        let _ = fail(&b).await;
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "the refusal reset the count"
        );
        let _ = fail(&b).await;
        assert_eq!(b.state(), BreakerState::Open);
    }
}
