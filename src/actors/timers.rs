//! The timer actor: fires order deadlines (payment timeout, merchant accept timeout, automatic
//! completion). A deadline is never stored on its own: it is the order's `updated_at` (the moment
//! it entered its status) plus the configured duration, so it survives restarts and passivation
//! with the order row itself. At startup the node re-arms every order that waits in a timed status.
//!
//! Firing sends the order actor a `ChangeOrder` that names the version the deadline was armed
//! for; an order that has moved on refuses it, so a deadline never fires twice for one
//! transition nor on an order that left its status.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message};

use super::order_machine::{OrderEvent, OrderStatus};
use crate::cluster::Router;
use crate::config::TimersConfig;
use crate::domain::{now_ms, Caller};
use crate::error::Error;
use crate::messages::ChangeOrder;
use crate::metrics;

// ---- messages ----

/// New deadline durations (a config reload): they apply to deadlines armed from now on.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SetTimers(pub TimersConfig);

/// Arms the deadline of an order that just entered `status` at `since` (ms since the epoch).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Arm {
    /// The order.
    pub order_id: String,
    /// Its version in that status.
    pub version: i64,
    /// The status it entered.
    pub status: OrderStatus,
    /// When it entered it.
    pub since: i64,
}

/// Drops the deadlines of orders in `shards` (this node handed them over; their new owner
/// re-arms them from the store).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ForgetShards {
    /// The shards handed over.
    pub shards: Vec<u32>,
}

/// How many deadlines are armed (tests, metrics).
#[derive(Message, Debug, Clone)]
#[rtype(result = "usize")]
pub struct Pending;

// ---- actor ----

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Deadline {
    due: i64,
    order_id: String,
    version: i64,
    event: EventKey,
}

/// `OrderEvent` is not `Ord`; this is the subset a timer can fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EventKey {
    PaymentTimeout,
    AcceptTimeout,
    AutoComplete,
}

impl EventKey {
    fn event(self) -> OrderEvent {
        match self {
            EventKey::PaymentTimeout => OrderEvent::PaymentTimeout,
            EventKey::AcceptTimeout => OrderEvent::AcceptTimeout,
            EventKey::AutoComplete => OrderEvent::Confirm,
        }
    }

    fn name(self) -> &'static str {
        match self {
            EventKey::PaymentTimeout => "payment_timeout",
            EventKey::AcceptTimeout => "accept_timeout",
            EventKey::AutoComplete => "auto_complete",
        }
    }
}

/// The node's order deadlines, soonest first.
pub struct TimerActor {
    router: Router,
    cfg: TimersConfig,
    heap: BinaryHeap<Reverse<Deadline>>,
}

impl TimerActor {
    /// A timer actor firing through `router`.
    pub fn new(router: Router, cfg: TimersConfig) -> Self {
        TimerActor {
            router,
            cfg,
            heap: BinaryHeap::new(),
        }
    }

    /// The deadline of an order that entered `status` at `since`, if that status has one.
    fn deadline(&self, status: OrderStatus, since: i64) -> Option<(i64, EventKey)> {
        let (ms, key) = match status {
            OrderStatus::PendingPayment => (self.cfg.payment_timeout_ms, EventKey::PaymentTimeout),
            OrderStatus::Paid => (self.cfg.accept_timeout_ms, EventKey::AcceptTimeout),
            OrderStatus::Delivered => (self.cfg.auto_complete_ms, EventKey::AutoComplete),
            _ => return None,
        };
        Some((since.saturating_add(ms as i64), key))
    }

    fn fire_due(&mut self, ctx: &mut Context<Self>) {
        let now = now_ms();
        while self.heap.peek().is_some_and(|Reverse(d)| d.due <= now) {
            let Some(Reverse(d)) = self.heap.pop() else {
                break;
            };
            let router = self.router.clone();
            let fut = async move {
                let res = router
                    .send(
                        &d.order_id,
                        ChangeOrder {
                            caller: Caller::system(),
                            event: d.event.event(),
                            party: None,
                            expected_version: Some(d.version),
                        },
                    )
                    .await;
                let outcome = match &res {
                    Ok(_) => "fired",
                    // The order moved on (or is gone): the deadline no longer applies.
                    Err(
                        Error::Conflict(_)
                        | Error::IllegalTransition { .. }
                        | Error::NotFound { .. },
                    ) => "moot",
                    Err(_) => "failed",
                };
                if let Err(e) = &res {
                    if outcome == "failed" {
                        tracing::warn!(order = %d.order_id, kind = d.event.name(), error = %e, "deadline could not fire; retrying in a second");
                    }
                }
                metrics::TIMERS_FIRED
                    .with_label_values(&[d.event.name(), outcome])
                    .inc();
                (d, outcome)
            };
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(fut).map(|(mut d, outcome), act, _| {
                    if outcome == "failed" {
                        d.due = now_ms() + 1000;
                        act.heap.push(Reverse(d));
                    }
                }),
            );
        }
    }
}

impl Actor for TimerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(usize::MAX >> 4);
        let tick = Duration::from_millis(self.cfg.tick_ms.max(1));
        ctx.run_interval(tick, |act, ctx| act.fire_due(ctx));
    }
}

impl Handler<SetTimers> for TimerActor {
    type Result = ();

    fn handle(&mut self, msg: SetTimers, _ctx: &mut Context<Self>) {
        // The tick keeps its period (it is set when the actor starts).
        let tick = self.cfg.tick_ms;
        self.cfg = TimersConfig {
            tick_ms: tick,
            ..msg.0
        };
    }
}

impl Handler<Arm> for TimerActor {
    type Result = ();

    fn handle(&mut self, msg: Arm, ctx: &mut Context<Self>) {
        if let Some((due, event)) = self.deadline(msg.status, msg.since) {
            self.heap.push(Reverse(Deadline {
                due,
                order_id: msg.order_id,
                version: msg.version,
                event,
            }));
            if due <= now_ms() {
                self.fire_due(ctx);
            }
        }
    }
}

impl Handler<ForgetShards> for TimerActor {
    type Result = ();

    fn handle(&mut self, msg: ForgetShards, _ctx: &mut Context<Self>) {
        let router = &self.router;
        let gone: std::collections::HashSet<u32> = msg.shards.into_iter().collect();
        self.heap
            .retain(|Reverse(d)| !gone.contains(&router.shard_of(&d.order_id)));
    }
}

impl Handler<Pending> for TimerActor {
    type Result = usize;

    fn handle(&mut self, _: Pending, _ctx: &mut Context<Self>) -> usize {
        self.heap.len()
    }
}
