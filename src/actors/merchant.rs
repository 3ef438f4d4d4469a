//! The merchant actor: profile, open/closed, menu and stock. It holds the stock lease for its
//! merchant (granted by the lock actor, renewed in the background) and admits reservations from
//! memory, so the hot path never waits on Redis. The orders it admits write the stock decrement,
//! fenced with the lease's token, in their own creating transaction.

use std::collections::BTreeMap;
use std::time::Duration;
use tracing::Instrument as _;

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler,
    ResponseActFuture, ResponseFuture, Supervised, WrapFuture,
};

use super::lock::{AcquireLease, LeaseLost, ReleaseLease};
use super::shard::{Shard, Slot};
use super::{Deps, Entity, Idleness, Loaded, Stop};
use crate::domain::{now_ms, Caller, Role};
use crate::error::{Error, Result};
use crate::lock::Lease;
use crate::messages::{
    CommitWrites, GetMerchant, MerchantView, PlaceOutcome, RegisterMerchant, Reservation,
    ReserveAndPlace, ReserveStock, RestockItems, SetMenu, SetOpen, SettleReservation, StockFence,
    UnreserveStock,
};
use crate::metrics;
use crate::model::{MenuItem, Merchant, OrderLine, OutboxEvent, Payload};
use crate::store::{Refusal, ShardEpoch, StoreError, Write};

// ---- actor ----

/// Loaded merchant state.
#[derive(Debug)]
struct State {
    /// The profile row.
    merchant: Merchant,
    /// Menu by SKU; `stock` is what is still available to reserve.
    menu: BTreeMap<String, MenuItem>,
    /// Highest fencing token seen on this merchant's SKU rows.
    max_fence: i64,
}

/// One merchant.
pub struct MerchantActor {
    /// Merchant id.
    id: String,
    /// Node services.
    deps: Deps,
    /// The shard epoch every write carries (cluster).
    fence: Option<ShardEpoch>,
    /// Persisted state once loaded.
    state: Loaded<State>,
    /// The stock lease while held.
    lease: Option<Lease>,
    /// Reservations handed out and not yet written or given back.
    in_flight: usize,
    /// Passivation bookkeeping.
    idle: Idleness,
    /// When the first `Stop` arrived while reservations were still in flight.
    stopping_since: Option<std::time::Instant>,
}

impl Entity for MerchantActor {
    const KIND: &'static str = "merchant";

    fn fresh(id: String, deps: Deps, fence: Option<ShardEpoch>) -> Self {
        MerchantActor {
            id,
            deps,
            fence,
            state: Loaded::Loading,
            lease: None,
            in_flight: 0,
            idle: Idleness::new(),
            stopping_since: None,
        }
    }

    fn registry(shard: &mut Shard) -> &mut std::collections::HashMap<String, Slot<Self>> {
        &mut shard.merchants
    }
}

impl Actor for MerchantActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(usize::MAX >> 4);
        self.load(ctx);
        ctx.run_interval(self.deps.settings.idle_check(), |act, _ctx| {
            if act.in_flight == 0 && act.idle.due(act.deps.settings.idle) {
                super::ask_passivation::<Self>(&act.deps, &act.id);
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(lease) = self.lease.take() {
            self.deps.lock.do_send(ReleaseLease(lease));
        }
    }
}

impl Supervised for MerchantActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        metrics::ACTOR_RESTARTS
            .with_label_values(&[Self::KIND])
            .inc();
        self.state = Loaded::Loading;
        self.in_flight = 0;
    }
}

impl MerchantActor {
    fn load(&mut self, ctx: &mut Context<Self>) {
        self.state = Loaded::Loading;
        let store = self.deps.store.clone();
        let id = self.id.clone();
        ctx.wait(
            async move { store.load_merchant(&id).await }
                .into_actor(self)
                .map(|res, act, _| {
                    act.state = match res {
                        Ok(None) => Loaded::Absent,
                        Ok(Some((merchant, items))) => {
                            let max_fence = items.iter().map(|(_, f)| *f).max().unwrap_or(0);
                            let menu = items.into_iter().map(|(i, _)| (i.sku.clone(), i)).collect();
                            Loaded::Present(State {
                                merchant,
                                menu,
                                max_fence,
                            })
                        }
                        Err(e) => {
                            tracing::warn!(merchant = %act.id, error = %e, "merchant load failed");
                            Loaded::Failed(e.to_string())
                        }
                    };
                }),
        );
    }

    fn loaded(&mut self, ctx: &mut Context<Self>) -> Result<&mut State> {
        if let Loaded::Failed(e) = &self.state {
            let e = e.clone();
            self.load(ctx); // try again; the next message waits for it
            return Err(Error::Unavailable(format!(
                "store unavailable, merchant could not be loaded: {e}"
            )));
        }
        match &mut self.state {
            Loaded::Present(s) => Ok(s),
            Loaded::Absent => Err(Error::not_found("merchant", self.id.clone())),
            Loaded::Loading | Loaded::Unchecked => {
                Err(Error::Unavailable("merchant is loading".into()))
            }
            Loaded::Failed(_) => Err(Error::Unavailable("merchant is reloading".into())),
        }
    }

    fn view(&self) -> Result<MerchantView> {
        match &self.state {
            Loaded::Present(s) => Ok(MerchantView {
                merchant: s.merchant.clone(),
                menu: s.menu.values().cloned().collect(),
            }),
            _ => Err(Error::not_found("merchant", self.id.clone())),
        }
    }

    /// A future holding the stock lease's fence, acquiring the lease first if needed.
    fn with_lease(&mut self, ctx: &mut Context<Self>) -> ResponseActFuture<Self, Result<i64>> {
        if let Some(lease) = &self.lease {
            let fence = lease.fence;
            return Box::pin(actix::fut::ready(Ok(fence)));
        }
        let floor = match &self.state {
            Loaded::Present(s) => s.max_fence + 1,
            _ => 1,
        };
        let (lock, holder) = (self.deps.lock.clone(), ctx.address().recipient());
        let key = format!("stock:{}", self.id);
        // In a cluster the lease can only be held elsewhere by a node that just lost this
        // merchant's shard (crashed, or paused and fenced): wait for it to expire rather than
        // refuse, up to `lease_wait`. (Safety does not rest on the wait: the store refuses
        // the old holder's stale fence.)
        let wait = self.deps.settings.lease_wait;
        // With a fresh lease, reread the stock: another node may have sold while we had none.
        let store = self.deps.store.clone();
        let id = self.id.clone();
        let fut = async move {
            let asked = std::time::Instant::now();
            let lease = loop {
                let req = lock.send(AcquireLease {
                    key: key.clone(),
                    floor,
                    holder: holder.clone(),
                });
                match req.await {
                    Ok(Ok(lease)) => break lease,
                    Ok(Err(crate::lock::LockError::Held(_))) if asked.elapsed() < wait => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(Err(crate::lock::LockError::Held(_))) => {
                        return Err(Error::Unavailable(
                            "stock lease for this merchant is held by another node".into(),
                        ))
                    }
                    Ok(Err(e)) => return Err(e.into()),
                    Err(e) => return Err(e.into()),
                }
            };
            let fresh = store.load_merchant(&id).await;
            Ok((lease, fresh))
        };
        Box::pin(fut.in_current_span().into_actor(self).map(|res, act, _| {
            let (lease, fresh) = res?;
            let fence = lease.fence;
            act.lease = Some(lease);
            if let Loaded::Present(s) = &mut act.state {
                s.max_fence = s.max_fence.max(fence);
                if let Ok(Some((_, items))) = fresh {
                    // Reservations still in flight were made under an older lease; memory keeps
                    // them deducted, so it can only be lower than the store, never higher.
                    for (item, _) in items {
                        if let Some(mine) = s.menu.get_mut(&item.sku) {
                            mine.stock = mine.stock.min(item.stock);
                        } else {
                            s.menu.insert(item.sku.clone(), item);
                        }
                    }
                }
            }
            Ok(fence)
        }))
    }

    /// Persists a profile change (version-checked) and applies it on success.
    fn save_profile(
        &mut self,
        next: Merchant,
        event: &str,
        expected: Option<i64>,
    ) -> ResponseActFuture<Self, Result<MerchantView>> {
        let ev = OutboxEvent {
            aggregate_type: "merchant".into(),
            aggregate_id: next.id.clone(),
            event_type: event.into(),
            payload: serde_json::json!({
                "open": next.open,
                "name": next.name,
                "version": next.version,
                "location": next.location,
            })
            .into(),
            created_at: now_ms(),
            traceparent: None,
        };
        let first = match expected {
            None => Write::InsertMerchant(next.clone()),
            Some(v) => Write::UpdateMerchant {
                merchant: next.clone(),
                expected_version: v,
            },
        };
        let (deps, shard) = (self.deps.clone(), self.fence);
        Box::pin(
            async move {
                let res = deps
                    .store
                    .commit_fenced(shard, vec![first, Write::Event(ev)])
                    .await;
                if let Err(e) = &res {
                    super::on_fenced(&deps, e);
                }
                res
            }
            .in_current_span()
            .into_actor(self)
            .map(move |res, act, ctx| {
                match res {
                    Ok(()) => match &mut act.state {
                        Loaded::Present(s) => s.merchant = next,
                        _ => {
                            act.state = Loaded::Present(State {
                                merchant: next,
                                menu: BTreeMap::new(),
                                max_fence: 0,
                            })
                        }
                    },
                    Err(e) => {
                        if matches!(
                            e,
                            crate::store::StoreError::VersionConflict { .. }
                                | crate::store::StoreError::Fenced { .. }
                        ) {
                            ctx.stop(); // another writer: reload rather than overwrite
                        }
                        return Err(e.into());
                    }
                }
                act.view()
            }),
        )
    }

    fn reserve(&mut self, lines: Vec<(String, i64)>, fence: i64) -> Result<Reservation> {
        let id = self.id.clone();
        let Loaded::Present(s) = &mut self.state else {
            return Err(Error::not_found("merchant", id));
        };
        if !s.merchant.open {
            return Err(Error::MerchantClosed(id));
        }
        // Merge repeated SKUs, then check everything before touching anything.
        let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
        for (sku, qty) in lines {
            if qty <= 0 {
                return Err(Error::Invalid(format!("qty for {sku} must be positive")));
            }
            let e = wanted.entry(sku).or_insert(0);
            *e = e.saturating_add(qty);
        }
        for (sku, qty) in &wanted {
            let item = s
                .menu
                .get(sku)
                .ok_or_else(|| Error::UnknownSku(sku.clone()))?;
            if item.stock < *qty {
                return Err(Error::OutOfStock { sku: sku.clone() });
            }
        }
        let mut out = Vec::with_capacity(wanted.len());
        let mut total: i64 = 0;
        for (sku, qty) in wanted {
            if let Some(item) = s.menu.get_mut(&sku) {
                item.stock -= qty;
                total = total.saturating_add(item.price_cents.saturating_mul(qty));
                out.push(OrderLine {
                    sku,
                    name: item.name.clone(),
                    qty,
                    price_cents: item.price_cents,
                });
            }
        }
        self.in_flight += 1;
        Ok(Reservation {
            lines: out,
            total_cents: total,
            fence,
            pickup: s.merchant.location,
        })
    }
}

fn ready<T: 'static>(v: Result<T>) -> AtomicResponse<MerchantActor, Result<T>> {
    AtomicResponse::new(Box::pin(actix::fut::ready(v)))
}

fn may_manage(caller: &Caller, id: &str) -> Result<()> {
    if caller.is(Role::Merchant, id) {
        Ok(())
    } else {
        Err(Error::Forbidden(
            "only this merchant or an admin may change it".into(),
        ))
    }
}

impl Handler<RegisterMerchant> for MerchantActor {
    type Result = AtomicResponse<Self, Result<MerchantView>>;

    fn handle(&mut self, msg: RegisterMerchant, _ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        if !msg.caller.is_admin() {
            return ready(Err(Error::Forbidden(
                "only an admin may create merchants".into(),
            )));
        }
        if !matches!(self.state, Loaded::Absent) {
            return ready(Err(Error::Conflict(format!(
                "merchant {} already exists",
                self.id
            ))));
        }
        let m = Merchant {
            id: self.id.clone(),
            name: msg.name,
            location: msg.location,
            open: true,
            version: 1,
        };
        AtomicResponse::new(self.save_profile(m, "merchant_created", None))
    }
}

impl Handler<SetOpen> for MerchantActor {
    type Result = AtomicResponse<Self, Result<MerchantView>>;

    fn handle(&mut self, msg: SetOpen, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        let id = self.id.clone();
        let next = match self.loaded(ctx) {
            Ok(s) => {
                if let Err(e) = may_manage(&msg.caller, &id) {
                    return ready(Err(e));
                }
                let mut m = s.merchant.clone();
                m.open = msg.open;
                m.version += 1;
                m
            }
            Err(e) => return ready(Err(e)),
        };
        let expected = next.version - 1;
        let event = if msg.open {
            "merchant_opened"
        } else {
            "merchant_closed"
        };
        AtomicResponse::new(self.save_profile(next, event, Some(expected)))
    }
}

impl Handler<GetMerchant> for MerchantActor {
    type Result = Result<MerchantView>;

    fn handle(&mut self, _: GetMerchant, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        self.loaded(ctx)?;
        self.view()
    }
}

impl Handler<SetMenu> for MerchantActor {
    type Result = AtomicResponse<Self, Result<MerchantView>>;

    fn handle(&mut self, msg: SetMenu, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        let id = self.id.clone();
        if let Err(e) = self.loaded(ctx).and_then(|_| may_manage(&msg.caller, &id)) {
            return ready(Err(e));
        }
        let (deps, shard) = (self.deps.clone(), self.fence);
        let items = msg.items;
        let fut = self.with_lease(ctx).then(move |fence, act, _ctx| {
            let plan = fence.and_then(|fence| {
                let Loaded::Present(s) = &act.state else {
                    return Err(Error::not_found("merchant", act.id.clone()));
                };
                let mut writes: Vec<Write> = s
                    .menu
                    .keys()
                    .filter(|sku| !items.iter().any(|i| &i.sku == *sku))
                    .map(|sku| Write::DeleteSku {
                        merchant_id: act.id.clone(),
                        sku: sku.clone(),
                        fence,
                    })
                    .collect();
                writes.extend(items.iter().map(|item| Write::PutSku {
                    merchant_id: act.id.clone(),
                    item: item.clone(),
                    fence,
                }));
                writes.push(Write::Event(OutboxEvent {
                    aggregate_type: "merchant".into(),
                    aggregate_id: act.id.clone(),
                    event_type: "menu_updated".into(),
                    payload: Payload::of(&items),
                    created_at: now_ms(),
                    traceparent: None,
                }));
                Ok(writes)
            });
            async move {
                let writes = plan?;
                let res = deps.store.commit_fenced(shard, writes).await;
                if let Err(e) = &res {
                    super::on_fenced(&deps, e);
                }
                res.map_err(Error::from)
            }
            .in_current_span()
            .into_actor(act)
            .map(move |res, act, _ctx| {
                res?;
                if let Loaded::Present(s) = &mut act.state {
                    s.menu = items.into_iter().map(|i| (i.sku.clone(), i)).collect();
                }
                act.view()
            })
        });
        AtomicResponse::new(Box::pin(fut))
    }
}

impl Handler<ReserveStock> for MerchantActor {
    type Result = AtomicResponse<Self, Result<Reservation>>;

    fn handle(&mut self, msg: ReserveStock, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        if let Err(e) = self.loaded(ctx) {
            return ready(Err(e));
        }
        let fut = self
            .with_lease(ctx)
            .map(move |fence, act, _| act.reserve(msg.lines, fence?));
        AtomicResponse::new(Box::pin(fut))
    }
}

impl Handler<UnreserveStock> for MerchantActor {
    type Result = Result<()>;

    fn handle(&mut self, msg: UnreserveStock, ctx: &mut Context<Self>) -> Self::Result {
        self.in_flight = self.in_flight.saturating_sub(1);
        if msg.resync {
            // Memory and store disagree: drop the lease (its fence may be stale) and reload.
            if self.in_flight == 0 {
                ctx.stop();
            }
            return Ok(());
        }
        if let Loaded::Present(s) = &mut self.state {
            for l in msg.lines {
                if let Some(item) = s.menu.get_mut(&l.sku) {
                    item.stock += l.qty;
                }
            }
        }
        Ok(())
    }
}

impl Handler<SettleReservation> for MerchantActor {
    type Result = Result<()>;

    fn handle(&mut self, _: SettleReservation, _ctx: &mut Context<Self>) -> Self::Result {
        self.in_flight = self.in_flight.saturating_sub(1);
        Ok(())
    }
}

impl Handler<StockFence> for MerchantActor {
    type Result = AtomicResponse<Self, Result<i64>>;

    fn handle(&mut self, _: StockFence, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        if let Err(e) = self.loaded(ctx) {
            return ready(Err(e));
        }
        AtomicResponse::new(self.with_lease(ctx))
    }
}

impl Handler<ReserveAndPlace> for MerchantActor {
    // Not atomic: the reservation goes through this actor's mailbox as an ordinary (atomic)
    // `ReserveStock`, and the commit then runs beside the next orders' reservations, so group
    // commit still batches them.
    type Result = ResponseFuture<Result<PlaceOutcome>>;

    fn handle(&mut self, msg: ReserveAndPlace, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        let me = ctx.address();
        let store = self.deps.store.clone();
        Box::pin(
            async move {
                let r = me
                    .send(ReserveStock {
                        lines: msg.lines.clone(),
                    })
                    .await
                    .map_err(Error::from)??;
                let (order, writes) = super::order::creation(&msg.draft, &r);
                match store.commit_fenced(msg.fence, writes).await {
                    Ok(()) => {
                        me.do_send(SettleReservation);
                        Ok(PlaceOutcome::Placed(order))
                    }
                    Err(e) => {
                        let resync = matches!(
                            e,
                            StoreError::InsufficientStock { .. } | StoreError::StaleFence { .. }
                        );
                        me.do_send(UnreserveStock {
                            lines: r.lines,
                            resync,
                        });
                        Ok(PlaceOutcome::Refused(Refusal::from(e)))
                    }
                }
            }
            .in_current_span(),
        )
    }
}

impl Handler<CommitWrites> for MerchantActor {
    // Not atomic and not touching the merchant's state: the writes only join this node's
    // writer queue for the merchant.
    type Result = ResponseFuture<Result<Option<Refusal>>>;

    fn handle(&mut self, msg: CommitWrites, _ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        let store = self.deps.store.clone();
        Box::pin(
            async move {
                Ok(store
                    .commit_fenced(msg.fence, msg.writes)
                    .await
                    .err()
                    .map(Refusal::from))
            }
            .in_current_span(),
        )
    }
}

impl Handler<RestockItems> for MerchantActor {
    type Result = Result<()>;

    fn handle(&mut self, msg: RestockItems, _ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        if let Loaded::Present(s) = &mut self.state {
            for l in msg.lines {
                if let Some(item) = s.menu.get_mut(&l.sku) {
                    item.stock += l.qty;
                }
            }
        }
        Ok(())
    }
}

impl Handler<LeaseLost> for MerchantActor {
    type Result = ();

    fn handle(&mut self, msg: LeaseLost, ctx: &mut Context<Self>) {
        if self.lease.as_ref().map(|l| &l.token) == Some(&msg.lease.token) {
            tracing::warn!(merchant = %self.id, "stock lease lost; reloading stock before admitting more");
            self.lease = None;
            // Another node may have written stock since: reload before admitting more.
            ctx.stop();
        }
    }
}

impl Handler<Stop> for MerchantActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        let since = *self
            .stopping_since
            .get_or_insert_with(std::time::Instant::now);
        if self.in_flight == 0 || since.elapsed() >= self.deps.settings.stop_grace {
            // Past the grace, a reservation still unwritten is settled by the store: its order
            // writes under the old fence, which a later lease holder's fence refuses.
            ctx.stop();
        } else {
            // Orders are still writing reservations made under our lease: let them land first.
            ctx.run_later(Duration::from_millis(20), |_, ctx| ctx.notify(Stop));
        }
    }
}
