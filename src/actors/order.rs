//! The order actor: one per order, holding its state machine (`order_machine`). It is the only
//! writer of its order's row: each change is planned from the current state, persisted with its
//! outbox event (version-checked), and only then applied and acknowledged.

use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler,
    Supervised, WrapFuture,
};

use once_cell::sync::OnceCell;

use super::order_machine::{
    frees_rider, releases_stock, transition, OrderEvent, OrderStatus, ALL_STATUSES,
};
use super::shard::{Shard, Slot, Terminal};
use super::timers::Arm;
use super::{guard, Deps, Entity, Loaded, Stop};
use crate::domain::{now_ms, Caller, Role};
use crate::error::{Error, Result};
use crate::messages::{
    ChangeOrder, ClaimRider, CrashOrder, FreeRider, GetOrder, OrderChanged, OrderDraft,
    PaymentNotice, PaymentStarted, PlaceOrder, PlaceOutcome, Placed, Reservation, ReserveAndPlace,
    RestockItems, StartPayment, StockFence,
};
use crate::metrics;
use crate::model::{Order, OutboxEvent, Payload};
use crate::payments::{intent_id_for, refund_id_for, Intent, IntentStatus, PayError};
use crate::store::{PaymentRow, RefundRow, ShardEpoch, StoreError, Write};

// ---- actor ----

/// One order.
pub struct OrderActor {
    /// Order id.
    id: String,
    /// Node services.
    deps: Deps,
    /// The shard epoch every write carries (cluster).
    fence: Option<ShardEpoch>,
    /// Persisted state once loaded; shared (not copied) with the store's write, the reply and
    /// the announcements of each change.
    state: Loaded<Arc<Order>>,
    /// What this life knows of the order's payments without reading them.
    payments: KnownPayments,
}

/// An order's payment rows as its actor knows them. Only the order's actor writes them (`pay`
/// inserts, a provider event moves one), one message at a time, so what this life wrote and
/// has not seen changed since is what the store holds: the first `pay` of an order placed in
/// this life and the provider's first event about the intent it made need no read.
#[derive(Debug, Default)]
enum KnownPayments {
    /// Read them (a loaded order, or anything since).
    #[default]
    Unknown,
    /// This life inserted the order: it has no payment.
    None,
    /// This life made this intent and no provider event was applied since.
    Made(PaymentRow),
}

impl Entity for OrderActor {
    const KIND: &'static str = "order";

    fn fresh(id: String, deps: Deps, fence: Option<ShardEpoch>) -> Self {
        OrderActor {
            id,
            deps,
            fence,
            state: Loaded::Loading,
            payments: KnownPayments::Unknown,
        }
    }

    fn fresh_for_create(id: String, deps: Deps, fence: Option<ShardEpoch>) -> Self {
        // Most orders are new: no read before the insert (a retry's insert finds the row and
        // is answered from it; see `PlaceOrder`).
        OrderActor {
            state: Loaded::Unchecked,
            ..Self::fresh(id, deps, fence)
        }
    }

    fn registry(shard: &mut Shard) -> &mut std::collections::HashMap<String, Slot<Self>> {
        &mut shard.orders
    }
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(usize::MAX >> 4);
        if !matches!(self.state, Loaded::Unchecked) {
            self.load(ctx);
        }
        // Idleness is tracked by the shard (it sees every message): one sweep per shard instead
        // of one timer per order.
    }
}

impl Supervised for OrderActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        metrics::ACTOR_RESTARTS
            .with_label_values(&[Self::KIND])
            .inc();
        self.state = Loaded::Loading;
    }
}

type Reply<T> = AtomicResponse<OrderActor, Result<T>>;

fn ready<T: 'static>(v: Result<T>) -> Reply<T> {
    AtomicResponse::new(Box::pin(actix::fut::ready(v)))
}

/// Whether `caller` may see `o` at all.
fn may_read(caller: &Caller, o: &Order) -> bool {
    match caller.role {
        Role::Admin => true,
        Role::Customer => caller.id == o.customer_id,
        Role::Merchant => caller.id == o.merchant_id,
        Role::Rider => o.rider_id.as_deref() == Some(caller.id.as_str()),
    }
}

/// Checks that `caller` may apply `event` to `o`, given the party named in the request.
fn authorize(caller: &Caller, o: &Order, event: OrderEvent, party: Option<&str>) -> Result<()> {
    use OrderEvent as E;
    let deny = |why: &str| Err(Error::Forbidden(why.to_string()));
    match event {
        E::Pay => {
            // Money is taken by the payment provider; its signed callback (applied as the
            // platform) moves the order. Customers start a payment with `StartPayment`.
            if caller.is_admin() {
                Ok(())
            } else {
                deny("an order is paid through its payment intent (POST /v1/orders/{id}/pay)")
            }
        }
        E::Cancel | E::Confirm => {
            if caller.is(Role::Customer, &o.customer_id) {
                Ok(())
            } else {
                deny("only the customer who placed the order may do that")
            }
        }
        E::Accept | E::Reject => {
            if party.is_some_and(|m| m != o.merchant_id) {
                return Err(Error::not_found("order", o.id.clone()));
            }
            if caller.is(Role::Merchant, &o.merchant_id) {
                Ok(())
            } else {
                deny("only the order's merchant may do that")
            }
        }
        E::AssignRider => {
            if !caller.is_admin() {
                return deny("only dispatch (an admin) assigns riders");
            }
            if party.is_none() {
                return Err(Error::Invalid("rider_id is required".into()));
            }
            Ok(())
        }
        E::ReleaseRider | E::PickUp | E::Deliver => {
            let rider = party.unwrap_or(caller.id.as_str());
            if caller.is(Role::Rider, rider) && o.rider_id.as_deref() == Some(rider) {
                Ok(())
            } else {
                deny("only the rider assigned to the order may do that")
            }
        }
        E::PaymentTimeout | E::AcceptTimeout | E::RefundCompleted => {
            if caller.is_admin() {
                Ok(())
            } else {
                deny("only the platform may do that")
            }
        }
    }
}

/// What a planned change needs done around its commit.
struct Plan {
    /// The order before.
    current: Arc<Order>,
    /// The event.
    event: OrderEvent,
    /// Rider to claim first (assignment).
    claim: Option<String>,
    /// Give the stock back (fenced) in the same transaction.
    restock: bool,
    /// Rider to free afterwards.
    free: Option<String>,
}

impl OrderActor {
    /// Tells the owning shard this order is terminal (it is passivated sooner).
    fn tell_terminal(&self) {
        let id = self.id.clone();
        self.deps.router.tell_owner(&self.id, Terminal { id });
    }

    /// Reads the state from the store; the mailbox waits until it is loaded.
    fn load(&mut self, ctx: &mut Context<Self>) {
        self.state = Loaded::Loading;
        self.payments = KnownPayments::Unknown;
        let store = self.deps.store.clone();
        let id = self.id.clone();
        ctx.wait(
            async move { store.load_order(&id).await }
                .into_actor(self)
                .map(|res, act, _| {
                    act.state = match res {
                        Ok(Some(o)) => {
                            if o.status.is_terminal() {
                                act.tell_terminal();
                            }
                            Loaded::Present(Arc::new(o))
                        }
                        Ok(None) => Loaded::Absent,
                        Err(e) => Loaded::Failed(e.to_string()),
                    };
                }),
        );
    }

    fn current(&mut self, ctx: &mut Context<Self>) -> Result<Arc<Order>> {
        match &self.state {
            Loaded::Present(o) => Ok(o.clone()),
            Loaded::Absent => Err(Error::not_found("order", self.id.clone())),
            Loaded::Loading => Err(Error::Unavailable("order is loading".into())),
            Loaded::Unchecked => {
                self.load(ctx); // not read yet: the next message waits for it
                Err(Error::Unavailable("order is loading".into()))
            }
            Loaded::Failed(e) => {
                let e = e.clone();
                self.load(ctx); // try again; the next message waits for it
                Err(Error::Unavailable(format!(
                    "store unavailable, order could not be loaded: {e}"
                )))
            }
        }
    }

    fn plan(&mut self, msg: ChangeOrder, ctx: &mut Context<Self>) -> Result<Plan> {
        let o = self.current(ctx)?;
        // Riders fall through to `authorize`, which tells an unassigned rider 403 rather than 404.
        if !may_read(&msg.caller, &o) && msg.caller.role != Role::Rider {
            return Err(Error::not_found("order", o.id.clone()));
        }
        authorize(&msg.caller, &o, msg.event, msg.party.as_deref())?;
        if msg.expected_version.is_some_and(|v| v != o.version) {
            return Err(Error::Conflict(format!(
                "order {} has moved on to version {}",
                o.id, o.version
            )));
        }
        transition(o.status, msg.event)?;
        Ok(Plan {
            claim: (msg.event == OrderEvent::AssignRider)
                .then(|| msg.party.clone())
                .flatten(),
            restock: releases_stock(o.status, msg.event),
            free: if frees_rider(o.status, msg.event) {
                o.rider_id.clone()
            } else {
                None
            },
            event: msg.event,
            current: o,
        })
    }
}

/// The payload of an `order_status_changed` event.
#[derive(serde::Serialize)]
struct StatusChanged<'a> {
    order_id: &'a str,
    merchant_id: &'a str,
    customer_id: &'a str,
    rider_id: Option<&'a str>,
    previous_rider_id: Option<&'a str>,
    event: OrderEvent,
    from: OrderStatus,
    to: OrderStatus,
    version: i64,
    order: &'a Order,
}

/// Persists `event` applied to `o` (the stock release fenced with `fence`, if any).
async fn commit_step(
    deps: &Deps,
    shard: Option<ShardEpoch>,
    o: &Order,
    event: OrderEvent,
    rider: Option<String>,
    fence: Option<i64>,
    extra: Vec<Write>,
) -> Result<Arc<Order>> {
    let to = transition(o.status, event)?;
    let mut next = o.clone();
    next.status = to;
    next.version = o.version + 1;
    next.updated_at = now_ms();
    match event {
        OrderEvent::AssignRider => next.rider_id = rider,
        OrderEvent::ReleaseRider => next.rider_id = None,
        _ => {}
    }
    let next = Arc::new(next);
    let mut writes = vec![Write::UpdateOrder {
        order: next.clone(),
        expected_version: o.version,
    }];
    if let Some(fence) = fence {
        writes.extend(o.items.iter().map(|l| Write::AdjustStock {
            merchant_id: o.merchant_id.clone(),
            sku: l.sku.clone(),
            delta: l.qty,
            fence,
        }));
    }
    writes.extend(extra);
    writes.push(Write::Event(OutboxEvent {
        aggregate_type: "order".into(),
        aggregate_id: o.id.clone(),
        event_type: "order_status_changed".into(),
        payload: Payload::of(&StatusChanged {
            order_id: &o.id,
            merchant_id: &o.merchant_id,
            customer_id: &o.customer_id,
            rider_id: next.rider_id.as_deref(),
            previous_rider_id: o.rider_id.as_deref(),
            event,
            from: o.status,
            to,
            version: next.version,
            order: &next,
        }),
        created_at: next.updated_at,
        traceparent: None,
    }));
    let committed = if fence.is_some() {
        super::commit_stock_change(deps, &o.merchant_id, shard, writes).await
    } else {
        deps.store.commit_fenced(shard, writes).await
    };
    if let Err(e) = committed {
        super::on_fenced(deps, &e);
        return Err(e.into());
    }
    transitions(o.status, to).inc();
    Ok(next)
}

/// `waimai_order_transitions_total{from, to}` for one pair of statuses, looked up once per pair
/// and kept: `with_label_values` hashes the labels and takes the vector's lock, on every commit.
/// (A status missing from `ALL_STATUSES` would still be counted, looked up each time, rather
/// than index past the kept ones on the commit path.)
fn transitions(from: OrderStatus, to: OrderStatus) -> prometheus::IntCounter {
    const N: usize = ALL_STATUSES.len();
    static KEPT: [OnceCell<prometheus::IntCounter>; N * N] = [const { OnceCell::new() }; N * N];
    let labels = [from.as_str(), to.as_str()];
    let (f, t) = (from as usize, to as usize);
    match KEPT.get(f * N + t).filter(|_| f < N && t < N) {
        Some(kept) => kept
            .get_or_init(|| metrics::ORDER_TRANSITIONS.with_label_values(&labels))
            .clone(),
        None => metrics::ORDER_TRANSITIONS.with_label_values(&labels),
    }
}

/// Runs a planned change: claim, fence, commit, and for a refund the provider's confirmation.
/// Returns every committed step (the order after it, oldest first) and the outcome.
async fn run_plan(
    deps: Deps,
    shard: Option<ShardEpoch>,
    plan: &Plan,
) -> (Vec<Arc<Order>>, Result<()>) {
    let router = &deps.router;
    let o = &plan.current;
    if let Some(rider) = &plan.claim {
        if let Err(e) = router
            .send(
                rider,
                ClaimRider {
                    order_id: o.id.clone(),
                },
            )
            .await
        {
            return (Vec::new(), Err(e));
        }
    }
    let fence = if plan.restock {
        match router.send(&o.merchant_id, StockFence).await {
            Ok(f) => Some(f),
            Err(e) => return (Vec::new(), Err(e)),
        }
    } else {
        None
    };
    // Entering `refunding` records the refund the saga owes in the same transaction, so a
    // node that crashes right after still finds it (the reconciler asks the provider again).
    let refunding = transition(o.status, plan.event).ok() == Some(OrderStatus::Refunding);
    let refund = if refunding {
        match refund_due(&deps, o).await {
            Ok(r) => r,
            Err(e) => return (Vec::new(), Err(e)),
        }
    } else {
        None
    };
    let extra = refund
        .iter()
        .map(|r| Write::InsertRefund(r.clone()))
        .collect();
    let first = match commit_step(
        &deps,
        shard,
        o,
        plan.event,
        plan.claim.clone(),
        fence,
        extra,
    )
    .await
    {
        Ok(n) => n,
        Err(e) => return (Vec::new(), Err(e)),
    };
    if first.status != OrderStatus::Refunding {
        return (vec![first], Ok(()));
    }
    match refund {
        Some(r) => {
            // Ask the provider now; its callback completes the refund. If the request does not
            // get through, the reconciler repeats it (same refund id: never refunded twice).
            request_refund(&deps, &r).await;
            (vec![first], Ok(()))
        }
        None => {
            // No money was taken through a provider (an order paid before payment intents
            // existed): nothing to give back, the refund completes at once.
            match commit_step(
                &deps,
                shard,
                &first,
                OrderEvent::RefundCompleted,
                None,
                None,
                Vec::new(),
            )
            .await
            {
                Ok(done) => (vec![first, done], Ok(())),
                Err(e) => (vec![first], Err(e)),
            }
        }
    }
}

/// The refund an order entering `refunding` owes: its succeeded intent's amount, if any.
async fn refund_due(deps: &Deps, o: &Order) -> Result<Option<RefundRow>> {
    let paid = deps
        .store
        .payments_of(&o.id)
        .await?
        .into_iter()
        .find(|p| p.status == IntentStatus::Succeeded.as_str());
    let now = now_ms();
    Ok(paid.map(|p| RefundRow {
        refund_id: refund_id_for(&o.id),
        order_id: o.id.clone(),
        intent_id: p.intent_id,
        amount_cents: p.amount_cents,
        status: "requested".into(),
        attempts: 1,
        next_attempt_at: now + deps.settings.refund_retry.as_millis() as i64,
        created_at: now,
        updated_at: now,
    }))
}

/// Asks the provider for a recorded refund (idempotent on its id); failures are logged, the
/// reconciler tries again when `next_attempt_at` comes.
pub(crate) async fn request_refund(deps: &Deps, r: &RefundRow) {
    if let Err(e) = deps
        .payments
        .refund(&r.refund_id, &r.intent_id, r.amount_cents)
        .await
    {
        tracing::warn!(order = %r.order_id, refund = %r.refund_id, error = %e, "refund request failed; it will be repeated");
    }
}

/// The creating transaction of a new order: the order at version 1 (`pending_payment`, priced
/// and with its pickup point from the reservation), the stock decrement of each line fenced
/// with the merchant's lease, and the `order_created` event. Built here, beside every other
/// order write, and committed by the merchant's actor (`ReserveAndPlace`).
pub fn creation(draft: &OrderDraft, r: &Reservation) -> (Arc<Order>, Vec<Write>) {
    let now = now_ms();
    let order = Order {
        id: draft.id.clone(),
        customer_id: draft.customer_id.clone(),
        merchant_id: draft.merchant_id.clone(),
        rider_id: None,
        status: OrderStatus::PendingPayment,
        items: r.lines.clone(),
        total_cents: r.total_cents,
        deliver_to: draft.deliver_to,
        pickup: Some(r.pickup),
        version: 1,
        created_at: now,
        updated_at: now,
        request_hash: draft.request_hash.clone(),
    };
    let order = Arc::new(order);
    let mut writes = Vec::with_capacity(r.lines.len() + 2);
    writes.push(Write::InsertOrder(order.clone()));
    writes.extend(r.lines.iter().map(|l| Write::AdjustStock {
        merchant_id: order.merchant_id.clone(),
        sku: l.sku.clone(),
        delta: -l.qty,
        fence: r.fence,
    }));
    writes.push(Write::Event(OutboxEvent {
        aggregate_type: "order".into(),
        aggregate_id: order.id.clone(),
        event_type: "order_created".into(),
        payload: Payload::of(&order),
        created_at: now,
        traceparent: None,
    }));
    (order, writes)
}

/// Tells the rest of the system about a committed change, from inside the actor so that one
/// order's announcements follow its commit order: live sockets (order, merchant and rider
/// topics), the order's deadline, and its zone's dispatcher.
fn announce(deps: &Deps, before: Option<&Order>, after: &Arc<Order>) {
    // A span of its own only inside a sampled trace (as for the actor's and the commit's).
    if crate::telemetry::current_is_sampled() {
        tracing::info_span!(
            target: "waimai::realtime",
            "ws.publish",
            otel.name = "publish to sockets",
            order = %after.id,
            status = ?after.status,
        )
        .in_scope(|| deps.events.order_changed(before, after));
    } else {
        deps.events.order_changed(before, after);
    }
    deps.timers.do_send(Arm {
        order_id: after.id.clone(),
        version: after.version,
        status: after.status,
        since: after.updated_at,
    });
    let from = before.map(|b| b.status);
    // A `stacked` zone also follows pickups (they shorten the routes it stacks onto).
    let picked_up = after.status == OrderStatus::PickedUp
        && from != Some(OrderStatus::PickedUp)
        && deps.live.current().dispatch.settings.policy == crate::dispatch::PolicyKind::Stacked;
    if deps.settings.dispatch
        && (after.status == OrderStatus::Accepted
            || from == Some(OrderStatus::Accepted)
            || picked_up)
    {
        let zones = &deps.settings.zones;
        let zone = after.pickup.map_or(zones.fallback(), |p| zones.of(p));
        deps.router.notify(
            zone,
            OrderChanged {
                order: after.clone(),
                previous_rider: before.and_then(|b| b.rider_id.clone()),
            },
        );
    }
}

impl Handler<ChangeOrder> for OrderActor {
    type Result = Reply<Arc<Order>>;

    fn handle(&mut self, msg: ChangeOrder, ctx: &mut Context<Self>) -> Self::Result {
        let plan = match guard(|| self.plan(msg, ctx)) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return ready(Err(e)),
            Err(why) => {
                tracing::error!(order = %self.id, %why, "order actor panicked; restarting from the store");
                // Stop (and be restarted from the store) once this reply is out.
                ctx.run_later(std::time::Duration::ZERO, |_, ctx| ctx.stop());
                return ready(Err(Error::Unavailable(format!(
                    "order actor crashed ({why}); restarted"
                ))));
            }
        };
        let (deps, shard) = (self.deps.clone(), self.fence);
        let fut = async move {
            let (committed, outcome) = run_plan(deps, shard, &plan).await;
            (plan, committed, outcome)
        };
        let span = tracing::Span::current();
        AtomicResponse::new(Box::pin(fut.in_current_span().into_actor(self).map(
            move |(plan, mut steps, outcome), act, ctx| {
                let _in = span.enter();
                let o = &plan.current;
                let mut before = o;
                for step in &steps {
                    announce(&act.deps, Some(&**before), step);
                    before = step;
                }
                let committed = steps.pop();
                if let Some(done) = &committed {
                    act.state = Loaded::Present(done.clone());
                    if done.status.is_terminal() {
                        act.tell_terminal();
                    }
                    if plan.restock {
                        act.deps.router.notify(
                            &o.merchant_id,
                            RestockItems {
                                lines: o.items.clone(),
                            },
                        );
                    }
                    if let Some(rider) = &plan.free {
                        act.deps.router.notify(
                            rider,
                            FreeRider {
                                order_id: o.id.clone(),
                            },
                        );
                    }
                } else if let Some(rider) = &plan.claim {
                    act.deps.router.notify(
                        rider,
                        FreeRider {
                            order_id: o.id.clone(),
                        },
                    );
                }
                if let Err(Error::Unavailable(_) | Error::NotOwner(_)) = &outcome {
                    if committed.is_none() {
                        // Possibly a lost version check: reload from the store before the next message.
                        ctx.stop();
                    }
                }
                outcome?;
                committed.ok_or_else(|| Error::Unavailable("order change was not committed".into()))
            },
        )))
    }
}

/// What a refused create learned of the order's row.
enum Known {
    /// The store holds this order (another request's, under the same id).
    Present(Arc<Order>),
    /// The store has no such order.
    Absent,
    /// Not looked at, or the look failed.
    Unknown,
}

/// A create whose own id the store refused as taken, where the row could then not be read to
/// tell a replay from a reused key: a 503 to retry (the actor stops and the retry reads the
/// row), never a 409 "already exists" for an order the caller may well have placed (seen once
/// in the cluster's kill test, 2026-11-29). Other refusals pass unchanged.
fn undecided(e: Error) -> Error {
    match e {
        Error::Conflict(why) => Error::Unavailable(format!(
            "the order's id is taken but its row could not be read ({why}); retry with the same key"
        )),
        other => other,
    }
}

impl Handler<PlaceOrder> for OrderActor {
    type Result = Reply<Placed>;

    fn handle(&mut self, msg: PlaceOrder, ctx: &mut Context<Self>) -> Self::Result {
        match &self.state {
            Loaded::Present(o) => {
                let same = o.customer_id == msg.caller.id
                    && o.request_hash.is_some()
                    && o.request_hash == msg.request_hash;
                return ready(if same {
                    Ok(Placed {
                        order: o.clone(),
                        replayed: true,
                    })
                } else {
                    Err(Error::IdempotencyMismatch)
                });
            }
            Loaded::Absent | Loaded::Unchecked => {}
            Loaded::Loading | Loaded::Failed(_) => {
                if let Err(e) = self.current(ctx) {
                    return ready(Err(e));
                }
            }
        }
        if msg.caller.role != Role::Customer {
            return ready(Err(Error::Forbidden("only customers place orders".into())));
        }
        let (deps, shard) = (self.deps.clone(), self.fence);
        let draft_id = self.id.clone();
        let draft = OrderDraft {
            id: self.id.clone(),
            customer_id: msg.caller.id.clone(),
            merchant_id: msg.merchant_id.clone(),
            deliver_to: msg.deliver_to,
            request_hash: msg.request_hash.clone(),
        };
        let unchecked = matches!(self.state, Loaded::Unchecked);
        let new_id = msg.new_id;
        let fut = async move {
            let place = ReserveAndPlace {
                draft,
                lines: msg.items,
                fence: shard,
            };
            let hash = place.draft.request_hash.clone();
            let caller_id = place.draft.customer_id.clone();
            let placed: Result<Arc<Order>> = match deps.router.send(&msg.merchant_id, place).await {
                Ok(PlaceOutcome::Placed(order)) => Ok(order),
                Ok(PlaceOutcome::Refused(refused)) => {
                    let e = StoreError::from(refused);
                    super::on_fenced(&deps, &e);
                    Err(Error::from(e))
                }
                Err(e) => Err(e),
            };
            match placed {
                Ok(mut order) => {
                    // The hash never travels (it is not part of an order's wire form): keep
                    // ours, so a retry of this request is answered as a replay.
                    if order.request_hash != hash {
                        Arc::make_mut(&mut order).request_hash = hash;
                    }
                    metrics::ORDER_TRANSITIONS
                        .with_label_values(&["none", "pending_payment"])
                        .inc();
                    Ok((order, false))
                }
                Err(e) if !new_id && (unchecked || matches!(e, Error::Conflict(_))) => {
                    // The order may exist although this actor did not read the store before
                    // trying (a retry of a create whose answer was lost, the actor passivated
                    // since), or although it believed the order absent (the store refused its
                    // id: written by the shard's previous owner). Its row says whether this is
                    // that request's replay.
                    match deps.store.load_order(&draft_id).await {
                        Ok(Some(existing)) => {
                            let existing = Arc::new(existing);
                            let same = existing.customer_id == caller_id
                                && existing.request_hash.is_some()
                                && existing.request_hash == hash;
                            if same {
                                Ok((existing, true))
                            } else {
                                Err((Error::IdempotencyMismatch, Known::Present(existing)))
                            }
                        }
                        Ok(None) => Err((undecided(e), Known::Absent)),
                        Err(_) => Err((undecided(e), Known::Unknown)),
                    }
                }
                // A refused id made for this very request was never written.
                Err(e) if unchecked => Err((e, Known::Absent)),
                Err(e) => Err((e, Known::Unknown)),
            }
        };
        let span = tracing::Span::current();
        AtomicResponse::new(Box::pin(fut.in_current_span().into_actor(self).map(
            move |res: std::result::Result<(Arc<Order>, bool), (Error, Known)>, act, ctx| {
                let _in = span.enter();
                match res {
                    Ok((order, replayed)) => {
                        if !replayed {
                            announce(&act.deps, None, &order);
                            act.payments = KnownPayments::None;
                        }
                        act.state = Loaded::Present(order.clone());
                        Ok(Placed { order, replayed })
                    }
                    Err((e, known)) => {
                        if matches!(
                            e,
                            Error::Conflict(_) | Error::NotOwner(_) | Error::Unavailable(_)
                        ) {
                            // The row exists after all, moved, or may have been written by a
                            // commit whose answer was lost: reload before the next message.
                            ctx.stop();
                        } else {
                            // Refused (out of stock, another request's id, ...): keep what the
                            // store was just found to hold (whatever the actor believed), or,
                            // if it never read the store, learn it before the next message.
                            match known {
                                Known::Present(order) => act.state = Loaded::Present(order),
                                _ if !matches!(act.state, Loaded::Unchecked) => {}
                                Known::Absent if new_id => {
                                    // Nobody else knows this id: passivate it soon.
                                    act.state = Loaded::Absent;
                                    act.tell_terminal();
                                }
                                Known::Absent => act.state = Loaded::Absent,
                                Known::Unknown => act.load(ctx),
                            }
                        }
                        Err(e)
                    }
                }
            },
        )))
    }
}

impl Handler<GetOrder> for OrderActor {
    type Result = Result<Arc<Order>>;

    fn handle(&mut self, msg: GetOrder, ctx: &mut Context<Self>) -> Self::Result {
        let o = self.current(ctx)?;
        if may_read(&msg.caller, &o) {
            Ok(o)
        } else {
            Err(Error::not_found("order", o.id.clone()))
        }
    }
}

impl Handler<StartPayment> for OrderActor {
    type Result = Reply<PaymentStarted>;

    fn handle(&mut self, msg: StartPayment, ctx: &mut Context<Self>) -> Self::Result {
        let o = match self.current(ctx) {
            Ok(o) => o,
            Err(e) => return ready(Err(e)),
        };
        if !may_read(&msg.caller, &o) {
            return ready(Err(Error::not_found("order", o.id.clone())));
        }
        if !msg.caller.is(Role::Customer, &o.customer_id) {
            return ready(Err(Error::Forbidden(
                "only the customer who placed the order pays for it".into(),
            )));
        }
        if !self.deps.payments.supports(&msg.method) {
            return ready(Err(Error::Invalid(format!(
                "payment method {:?} is not supported",
                msg.method
            ))));
        }
        if o.status != OrderStatus::PendingPayment {
            // Paid already (or past paying): as before payment intents existed.
            return ready(Err(Error::IllegalTransition {
                status: o.status,
                event: OrderEvent::Pay,
            }));
        }
        let deps = self.deps.clone();
        let fence = self.fence;
        let known = std::mem::take(&mut self.payments);
        let fut = async move {
            let existing = match known {
                KnownPayments::None => Vec::new(),
                _ => deps.store.payments_of(&o.id).await?,
            };
            // Money taken, or a payment under way: never a second charge.
            let live = existing
                .iter()
                .find(|p| p.status == IntentStatus::Succeeded.as_str())
                .or_else(|| {
                    existing
                        .iter()
                        .find(|p| p.status == IntentStatus::Open.as_str())
                });
            if let Some(p) = live {
                let intent = match deps.payments.intent(&p.intent_id).await {
                    Ok(i) => i,
                    Err(_) => Intent {
                        id: p.intent_id.clone(),
                        order_id: o.id.clone(),
                        amount_cents: p.amount_cents,
                        method: p.method.clone(),
                        status: IntentStatus::parse(&p.status).unwrap_or(IntentStatus::Open),
                    },
                };
                return Ok((PaymentStarted { intent, order: o }, None));
            }
            // Our record first, then the provider: no charge we do not know about.
            let now = now_ms();
            let row = PaymentRow {
                intent_id: intent_id_for(&o.id, existing.len()),
                order_id: o.id.clone(),
                amount_cents: o.total_cents,
                method: msg.method.clone(),
                status: IntentStatus::Open.as_str().into(),
                created_at: now,
                updated_at: now,
            };
            deps.store
                .commit_fenced(fence, vec![Write::InsertPayment(row.clone())])
                .await
                .inspect_err(|e| super::on_fenced(&deps, e))?;
            let intent = deps
                .payments
                .create_intent(&row.intent_id, &o.id, row.amount_cents, &row.method)
                .await
                .map_err(|e| match e {
                    PayError::Unknown(what) => Error::Invalid(what),
                    PayError::Unavailable(why) => Error::Unavailable(why),
                })?;
            metrics::PAYMENTS
                .with_label_values(&["intent_created"])
                .inc();
            Ok((PaymentStarted { intent, order: o }, Some(row)))
        };
        AtomicResponse::new(Box::pin(fut.in_current_span().into_actor(self).map(
            |res: Result<(PaymentStarted, Option<PaymentRow>)>, act, _| {
                res.map(|(started, made)| {
                    if let Some(row) = made {
                        act.payments = KnownPayments::Made(row);
                    }
                    started
                })
            },
        )))
    }
}

impl Handler<PaymentNotice> for OrderActor {
    type Result = Reply<bool>;

    fn handle(&mut self, msg: PaymentNotice, ctx: &mut Context<Self>) -> Self::Result {
        let o = match self.current(ctx) {
            Ok(o) => o,
            Err(e) => return ready(Err(e)),
        };
        let (deps, fence) = (self.deps.clone(), self.fence);
        let known = std::mem::take(&mut self.payments);
        let ev = msg.event;
        let fut = async move {
            let (seen, intents) = match known {
                // The first event about the intent this life made: not applied yet, and its
                // row is as it was written.
                KnownPayments::Made(row) if row.intent_id == ev.data.intent_id => {
                    (false, vec![row])
                }
                _ => deps.store.payment_notice_context(&ev.id, &o.id).await?,
            };
            if seen {
                metrics::PAYMENTS
                    .with_label_values(&["duplicate_event"])
                    .inc();
                return Ok((None, false));
            }
            let now = now_ms();
            let seen = Write::PaymentEvent {
                event_id: ev.id.clone(),
                intent_id: ev.data.intent_id.clone(),
                kind: ev.kind.clone(),
                at: now,
            };
            let Some(intent) = intents.iter().find(|p| p.intent_id == ev.data.intent_id) else {
                return Err(Error::Invalid(format!(
                    "intent {} is not a payment of order {}",
                    ev.data.intent_id, o.id
                )));
            };
            let set_intent = |status: IntentStatus| Write::SetPaymentStatus {
                intent_id: intent.intent_id.clone(),
                status: status.as_str().into(),
                at: now,
            };
            // Only what the event changes is written; the event id makes a redelivery a no-op.
            let record = |writes: Vec<Write>| async {
                let mut all = writes;
                all.push(seen.clone());
                match deps.store.commit_fenced(fence, all).await {
                    Ok(()) => Ok(()),
                    Err(crate::store::StoreError::Duplicate(_)) => Ok(()), // raced a redelivery
                    Err(e) => {
                        super::on_fenced(&deps, &e);
                        Err(Error::from(e))
                    }
                }
            };
            match ev.kind.as_str() {
                "payment.succeeded" => {
                    if o.status == OrderStatus::PendingPayment {
                        let extra = vec![set_intent(IntentStatus::Succeeded), seen.clone()];
                        let paid =
                            commit_step(&deps, fence, &o, OrderEvent::Pay, None, None, extra).await;
                        return match paid {
                            Ok(next) => {
                                metrics::PAYMENTS.with_label_values(&["paid"]).inc();
                                Ok((Some(next), true))
                            }
                            Err(Error::Conflict(_)) => Ok((None, false)), // raced a redelivery
                            Err(e) => Err(e),
                        };
                    }
                    let mut writes = vec![set_intent(IntentStatus::Succeeded)];
                    let cancelled = matches!(
                        o.status,
                        OrderStatus::Cancelled | OrderStatus::Refunded | OrderStatus::Refunding
                    );
                    let owed = cancelled
                        && deps.store.refund_of(&o.id).await?.is_none()
                        && intent.status != IntentStatus::Succeeded.as_str();
                    let refund = owed.then(|| RefundRow {
                        refund_id: refund_id_for(&o.id),
                        order_id: o.id.clone(),
                        intent_id: intent.intent_id.clone(),
                        amount_cents: intent.amount_cents,
                        status: "requested".into(),
                        attempts: 1,
                        next_attempt_at: now + deps.settings.refund_retry.as_millis() as i64,
                        created_at: now,
                        updated_at: now,
                    });
                    if let Some(r) = &refund {
                        // Money arrived for an order that no longer wants it (its payment
                        // deadline passed first): give it back.
                        writes.push(Write::InsertRefund(r.clone()));
                    }
                    record(writes).await?;
                    if let Some(r) = refund {
                        metrics::PAYMENTS
                            .with_label_values(&["refund_late_payment"])
                            .inc();
                        request_refund(&deps, &r).await;
                    }
                    Ok((None, true))
                }
                "payment.failed" => {
                    // A failure never undoes a success (events may arrive out of order).
                    let writes = if intent.status == IntentStatus::Open.as_str() {
                        metrics::PAYMENTS.with_label_values(&["declined"]).inc();
                        vec![set_intent(IntentStatus::Failed)]
                    } else {
                        Vec::new()
                    };
                    record(writes).await?;
                    Ok((None, true))
                }
                "refund.succeeded" => {
                    let done = Write::SetRefundStatus {
                        refund_id: ev
                            .data
                            .refund_id
                            .clone()
                            .unwrap_or_else(|| refund_id_for(&o.id)),
                        status: "succeeded".into(),
                        at: now,
                    };
                    if o.status == OrderStatus::Refunding {
                        let extra = vec![done, seen.clone()];
                        let refunded = commit_step(
                            &deps,
                            fence,
                            &o,
                            OrderEvent::RefundCompleted,
                            None,
                            None,
                            extra,
                        )
                        .await;
                        return match refunded {
                            Ok(next) => {
                                metrics::PAYMENTS.with_label_values(&["refunded"]).inc();
                                Ok((Some(next), true))
                            }
                            Err(Error::Conflict(_)) => Ok((None, false)),
                            Err(e) => Err(e),
                        };
                    }
                    record(vec![done]).await?;
                    Ok((None, true))
                }
                other => Err(Error::Invalid(format!("unknown event type {other}"))),
            }
        };
        let span = tracing::Span::current();
        AtomicResponse::new(Box::pin(fut.in_current_span().into_actor(self).map(
            move |res: Result<(Option<Arc<Order>>, bool)>, act, ctx| {
                let _in = span.enter();
                let (next, applied) = match res {
                    Ok(r) => r,
                    Err(e) => {
                        if matches!(e, Error::Unavailable(_) | Error::NotOwner(_)) {
                            ctx.stop(); // reload before the next message
                        }
                        return Err(e);
                    }
                };
                if let Some(next) = next {
                    let before = match &act.state {
                        Loaded::Present(b) => b.clone(),
                        _ => next.clone(),
                    };
                    announce(&act.deps, Some(&before), &next);
                    if next.status.is_terminal() {
                        act.tell_terminal();
                    }
                    act.state = Loaded::Present(next);
                }
                Ok(applied)
            },
        )))
    }
}

impl Handler<CrashOrder> for OrderActor {
    type Result = Result<Arc<Order>>;

    fn handle(&mut self, _: CrashOrder, ctx: &mut Context<Self>) -> Self::Result {
        let started = Instant::now();
        let outcome =
            guard(|| -> Arc<Order> { panic!("injected crash after {:?}", started.elapsed()) });
        match outcome {
            Ok(o) => Ok(o),
            Err(why) => {
                tracing::error!(order = %self.id, %why, "order actor panicked; restarting from the store");
                ctx.stop();
                Err(Error::Unavailable(format!(
                    "order actor crashed ({why}); restarted from the store"
                )))
            }
        }
    }
}

impl Handler<Stop> for OrderActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each pair of statuses has a counter of its own, and it is the vector's child for that
    /// pair: what one counts the other shows.
    #[test]
    fn kept_transition_counters_are_the_vectors_children() {
        for from in ALL_STATUSES {
            for to in ALL_STATUSES {
                let child =
                    metrics::ORDER_TRANSITIONS.with_label_values(&[from.as_str(), to.as_str()]);
                let before = child.get();
                transitions(from, to).inc();
                assert_eq!(child.get(), before + 1, "{from:?} -> {to:?}");
                assert_eq!(transitions(from, to).get(), before + 1);
            }
        }
    }
}
