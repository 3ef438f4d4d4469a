//! The checks run after every scenario, against what the node reports once the load is off:
//! - requests that got no answer are replayed with their idempotency key until their outcome is
//!   known (so the stock accounting below is exact);
//! - no order id was acknowledged for two different requests (no duplicates);
//! - every acknowledged order exists (no order lost) and is in the scenario's final status;
//! - no SKU oversold: initial stock = remaining stock + units held by acknowledged orders (all
//!   but cancelled ones and refunds of orders the merchant never accepted, which give their
//!   stock back); if some requests' outcome stays unknown (that check then fails on its own),
//!   the balance may be short by at most their units, never over;
//! - hot-sku: exactly min(stock, attempts) orders succeed and every other attempt is 409
//!   out_of_stock.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use warp::http::Method;

use super::ledger::{Acked, Unknown};
use super::{Ctx, Scenario};

/// Requests in flight while checking.
const CHECK_PARALLELISM: usize = 64;

/// How many offending ids a verdict quotes.
const QUOTE: usize = 5;

/// One verdict.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// Counts or offending ids.
    pub detail: String,
}

impl Check {
    /// A verdict.
    pub fn new(name: &str, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            ok,
            detail: detail.into(),
        }
    }
}

/// Runs every check; `extra` are the scenario's own verdicts, reported first.
pub(crate) async fn check(ctx: &Ctx, extra: Vec<Check>) -> Vec<Check> {
    let mut out = extra;
    let (resolved, unknown) = resolve_unknown(ctx).await;
    out.push(resolved);
    let dups = ctx.ledger.duplicates();
    out.push(Check::new(
        "no duplicate orders",
        dups.is_empty(),
        if dups.is_empty() {
            "every acknowledged id answers exactly one request".to_string()
        } else {
            format!(
                "{} ids acknowledged twice, e.g. {:?}",
                dups.len(),
                quote(&dups)
            )
        },
    ));
    let orders = ctx.ledger.acked_orders();
    let statuses = fetch_statuses(ctx, &orders).await;
    out.push(orders_present(ctx, &orders, &statuses));
    out.push(no_oversell(ctx, &orders, &statuses, &unknown).await);
    if ctx.plan.args.scenario == Scenario::HotSku {
        out.push(hot_sku(ctx));
    }
    out
}

fn quote<T: Clone>(v: &[T]) -> Vec<T> {
    v.iter().take(QUOTE).cloned().collect()
}

/// Rounds of replays before an outcome is declared unknown.
const RESOLVE_ROUNDS: u32 = 5;

/// Pause between replay rounds, so a node still draining its backlog can catch up.
const RESOLVE_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// What one replay gave.
enum Replay {
    /// The order exists (now).
    Created(String, Unknown),
    /// 409 out_of_stock: no order.
    Refused,
    /// Still no definite answer.
    Again(Unknown, String),
}

async fn replay(ctx: &Ctx, u: Unknown) -> Replay {
    let Some(customer) = ctx.world.customers.get(u.customer) else {
        return Replay::Again(u, "unknown customer".into());
    };
    let r = ctx
        .http
        .call(
            Method::POST,
            "/v1/orders",
            &customer.token,
            Some(&u.key),
            Some(&u.body),
        )
        .await;
    match r {
        Ok(r) if r.status == 201 => match r.str("id") {
            Some(id) => Replay::Created(id, u),
            None => Replay::Again(u, "201 without id".into()),
        },
        Ok(r) if r.status == 409 && r.code() == "out_of_stock" => Replay::Refused,
        Ok(r) => {
            let k = r.kind();
            Replay::Again(u, k)
        }
        Err(e) => Replay::Again(u, e.0),
    }
}

/// Replays create requests that got no answer, with the same key and body, in parallel and in
/// a few rounds; returns the verdict and the requests whose outcome is still unknown.
async fn resolve_unknown(ctx: &Ctx) -> (Check, Vec<Unknown>) {
    let mut pending = ctx.ledger.take_unknown();
    let n = pending.len();
    let (mut created, mut refused, mut reasons) = (0, 0, Vec::new());
    for round in 0..RESOLVE_ROUNDS {
        if pending.is_empty() {
            break;
        }
        if round > 0 {
            tokio::time::sleep(RESOLVE_PAUSE).await;
        }
        let results: Vec<Replay> = futures::stream::iter(pending.drain(..).map(|u| replay(ctx, u)))
            .buffer_unordered(CHECK_PARALLELISM)
            .collect()
            .await;
        reasons.clear();
        for r in results {
            match r {
                Replay::Created(id, u) => {
                    created += 1;
                    ctx.ledger.acked(
                        &id,
                        Acked {
                            merchant_id: u.merchant_id,
                            lines: u.lines,
                            key: u.key,
                        },
                    );
                }
                Replay::Refused => refused += 1,
                Replay::Again(u, why) => {
                    reasons.push(format!("{}: {why}", u.key));
                    pending.push(u);
                }
            }
        }
    }
    let check = Check::new(
        "every create request has a known outcome",
        pending.is_empty(),
        format!(
            "{n} requests got no answer during the run; replayed with their idempotency key: \
             {created} exist, {refused} out of stock, {} still unknown after {RESOLVE_ROUNDS} \
             rounds {:?}",
            pending.len(),
            quote(&reasons)
        ),
    );
    (check, pending)
}

/// What a GET of an order gave.
#[derive(Debug, Clone)]
enum Seen {
    /// 200 with this status.
    Status(String),
    /// 404.
    Missing,
    /// Anything else.
    Failed(String),
}

async fn fetch_statuses(ctx: &Ctx, orders: &[(String, Acked)]) -> HashMap<String, Seen> {
    futures::stream::iter(orders.iter().map(|(id, _)| async move {
        let seen = match ctx.http.get(&format!("/v1/orders/{id}"), &ctx.admin).await {
            Ok(r) if r.status == 200 => match r.str("status") {
                Some(s) => Seen::Status(s),
                None => Seen::Failed("200 without status".into()),
            },
            Ok(r) if r.status == 404 => Seen::Missing,
            Ok(r) => Seen::Failed(r.kind()),
            Err(e) => Seen::Failed(e.0),
        };
        (id.clone(), seen)
    }))
    .buffer_unordered(CHECK_PARALLELISM)
    .collect()
    .await
}

/// The status every acknowledged order must end in.
fn final_status(s: Scenario) -> &'static str {
    match s {
        Scenario::Create | Scenario::HotSku | Scenario::Browse => "pending_payment",
        Scenario::Lifecycle | Scenario::Track => "completed",
    }
}

fn orders_present(ctx: &Ctx, orders: &[(String, Acked)], seen: &HashMap<String, Seen>) -> Check {
    let want = final_status(ctx.plan.args.scenario);
    let (mut missing, mut wrong, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for (id, _) in orders {
        match seen.get(id) {
            Some(Seen::Status(s)) => {
                *by_status.entry(s.clone()).or_default() += 1;
                if s != want {
                    wrong.push(format!("{id}={s}"));
                }
            }
            Some(Seen::Missing) | None => missing.push(id.clone()),
            Some(Seen::Failed(e)) => failed.push(format!("{id}: {e}")),
        }
    }
    let ok = missing.is_empty() && wrong.is_empty() && failed.is_empty();
    Check::new(
        &format!("every acknowledged order exists and is {want}"),
        ok,
        format!(
            "{} acknowledged; by status {:?}; {} missing {:?}; {} in another status {:?}; {} unreadable {:?}",
            orders.len(),
            by_status,
            missing.len(),
            quote(&missing),
            wrong.len(),
            quote(&wrong),
            failed.len(),
            quote(&failed)
        ),
    )
}

/// Whether an order in `status` still holds its stock: cancelled orders gave it back, and so did
/// refunds of orders the merchant never accepted.
fn holds_stock(ctx: &Ctx, id: &str, status: Option<&str>) -> bool {
    match status {
        Some("cancelled") => false,
        Some("refunding" | "refunded") => ctx.ledger.was_accepted(id),
        _ => true,
    }
}

async fn no_oversell(
    ctx: &Ctx,
    orders: &[(String, Acked)],
    seen: &HashMap<String, Seen>,
    unknown: &[Unknown],
) -> Check {
    // Units requests of unknown outcome may hold: the balance may be short by at most these.
    let mut maybe: HashMap<(&str, &str), i64> = HashMap::new();
    for u in unknown {
        for (sku, qty) in &u.lines {
            *maybe
                .entry((u.merchant_id.as_str(), sku.as_str()))
                .or_default() += qty;
        }
    }
    let mut held: HashMap<(&str, &str), i64> = HashMap::new();
    for (id, o) in orders {
        let status = match seen.get(id) {
            Some(Seen::Status(s)) => Some(s.as_str()),
            _ => None,
        };
        if holds_stock(ctx, id, status) {
            for (sku, qty) in &o.lines {
                *held
                    .entry((o.merchant_id.as_str(), sku.as_str()))
                    .or_default() += qty;
            }
        }
    }
    let initial = ctx.world.initial_stock;
    let mut bad = Vec::new();
    let mut skus = 0;
    let mut sold = 0;
    for m in &ctx.world.merchants {
        let menu = match ctx
            .http
            .get(&format!("/v1/merchants/{}", m.id), &ctx.admin)
            .await
        {
            Ok(r) if r.status == 200 => r.body()["menu"].as_array().cloned().unwrap_or_default(),
            Ok(r) => {
                bad.push(format!("merchant {}: {}", m.id, r.kind()));
                continue;
            }
            Err(e) => {
                bad.push(format!("merchant {}: {}", m.id, e.0));
                continue;
            }
        };
        for sku in &m.skus {
            skus += 1;
            let remaining = menu
                .iter()
                .find(|i| i["sku"].as_str() == Some(sku))
                .and_then(|i| i["stock"].as_i64());
            let h = held
                .get(&(m.id.as_str(), sku.as_str()))
                .copied()
                .unwrap_or(0);
            let u = maybe
                .get(&(m.id.as_str(), sku.as_str()))
                .copied()
                .unwrap_or(0);
            sold += h;
            match remaining {
                Some(r) if r >= 0 && r + h <= initial && initial <= r + h + u => {}
                Some(r) => bad.push(format!(
                    "{}/{sku}: initial {initial} != remaining {r} + held by orders {h} \
                     (+ up to {u} by requests of unknown outcome)",
                    m.id
                )),
                None => bad.push(format!("{}/{sku}: not on the menu", m.id)),
            }
        }
    }
    Check::new(
        "no SKU oversold (initial = remaining + held)",
        bad.is_empty(),
        if bad.is_empty() {
            format!(
                "{skus} SKUs balance; {sold} units held by orders{}",
                if unknown.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (within the units of {} requests of unknown outcome)",
                        unknown.len()
                    )
                }
            )
        } else {
            format!("{} SKUs do not balance: {:?}", bad.len(), quote(&bad))
        },
    )
}

fn hot_sku(ctx: &Ctx) -> Check {
    let a = ctx.ledger.answers();
    let attempts: u64 = a.values().sum();
    let ok = a.get("201").copied().unwrap_or(0);
    let sold_out = a.get("409 out_of_stock").copied().unwrap_or(0);
    let stock = ctx.plan.stock.max(0) as u64;
    let want = stock.min(attempts);
    let others: Vec<String> = a
        .iter()
        .filter(|(k, _)| k.as_str() != "201" && k.as_str() != "409 out_of_stock")
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    Check::new(
        "hot-sku: exactly min(stock, attempts) succeed, the rest are 409 out_of_stock",
        ok == want && ok + sold_out == attempts,
        format!(
            "stock {stock}, attempts {attempts}: {ok} succeeded (want {want}), {sold_out} out of stock, others {others:?}"
        ),
    )
}
