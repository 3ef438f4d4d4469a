//! The event loop. Simulated time is a priority queue of events ordered by (time, sequence
//! number), so ties resolve in the order events were scheduled and a run is a pure function of
//! its parameters. Each dispatch call hands the policy the orders without an offer out and the
//! riders without one, exactly what the live dispatcher would pass.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::city::{demand_shape, City};
use super::report::{Compute, Offers, Outcomes, Peak, Productivity, Report, Spread};
use super::{SimError, SimParams};
use crate::dispatch::{
    build, haversine_m, AvailableRider, Haversine, Offer, Policy, PolicyKind, Stop, StopKind,
    WaitingOrder,
};
use crate::domain::Location;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;

/// Something that happens at a point in simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// An order is placed and enters dispatch.
    Place(usize),
    /// A dispatch round (for greedy: the retry of waiting orders).
    Round,
    /// A rider answers the offer with this serial.
    Answer {
        order: usize,
        serial: u64,
        accept: bool,
    },
    /// A rider finishes the first stop of its route (valid while `version` is the rider's).
    StopDone { rider: usize, version: u64 },
    /// An order still without a rider is cancelled.
    Cancel(usize),
}

/// An order as generated.
#[derive(Debug, Clone)]
struct SimOrder {
    id: String,
    placed: i64,
    pickup: Location,
    dropoff: Location,
    ready: i64,
    promised: i64,
}

/// An offer waiting for the rider's answer.
#[derive(Debug, Clone)]
struct Pending {
    rider: usize,
    serial: u64,
    offer: Offer,
}

/// What happened to an order so far.
#[derive(Debug, Clone, Default)]
struct OrderState {
    declined: BTreeSet<String>,
    offer: Option<Pending>,
    assigned: Option<i64>,
    picked: Option<i64>,
    delivered: Option<i64>,
    cancelled: bool,
    pickup_distance_m: f64,
}

/// The leg a rider is riding: towards the first stop of its route.
#[derive(Debug, Clone, Copy)]
struct RideLeg {
    from: Location,
    to: Location,
    depart: i64,
    arrive: i64,
    metres: f64,
}

#[derive(Debug, Clone)]
struct SimRider {
    id: String,
    /// Actual speed, m/s (the policy assumes the nominal one).
    speed: f64,
    /// Where it stands when it has no leg.
    anchor: Location,
    leg: Option<RideLeg>,
    route: Vec<Stop>,
    /// Bumped whenever the leg changes, so stale `StopDone` events are ignored.
    version: u64,
    /// The order offered to it, if any.
    offer: Option<usize>,
    metres: f64,
    busy_since: Option<i64>,
}

impl SimRider {
    fn position(&self, t: i64) -> Location {
        match self.leg {
            None => self.anchor,
            Some(l) if t >= l.arrive || l.arrive <= l.depart => l.to,
            Some(l) => {
                let f = (t - l.depart) as f64 / (l.arrive - l.depart) as f64;
                Location {
                    lat: l.from.lat + (l.to.lat - l.from.lat) * f,
                    lng: l.from.lng + (l.to.lng - l.from.lng) * f,
                }
            }
        }
    }
}

pub(super) struct Engine<'a> {
    p: &'a SimParams,
    policy: Box<dyn Policy>,
    rng: ChaCha8Rng,
    orders: Vec<SimOrder>,
    state: Vec<OrderState>,
    riders: Vec<SimRider>,
    order_ix: HashMap<String, usize>,
    rider_ix: HashMap<String, usize>,
    queue: BinaryHeap<Reverse<(i64, u64, Event)>>,
    seq: u64,
    /// Placed, not assigned, not cancelled; in placement order.
    waiting: BTreeSet<usize>,
    serial: u64,
    /// Orders delivered or cancelled.
    resolved: usize,
    demand_end: i64,
    end: i64,
    busy_by_hour: Vec<i64>,
    offers: Offers,
    round_micros: Vec<f64>,
    max_orders: usize,
    max_riders: usize,
}

impl<'a> Engine<'a> {
    pub(super) fn new(p: &'a SimParams) -> Result<Self, SimError> {
        let eta = Arc::new(Haversine::new(p.dispatch.speed_mps)?);
        let policy = build(&p.dispatch, eta)?;
        // Three streams of one seed: the city and its orders, the fleet, the riders' answers.
        // The same seed gives the same demand whatever the fleet or the policy.
        let stream = |n: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
            rng.set_stream(n);
            rng
        };
        let (mut rng, mut fleet) = (stream(0), stream(1));
        let city = City::generate(p.city.clone(), &mut rng);
        let demand_end = (p.hours * HOUR as f64) as i64;
        let orders = generate_orders(p, &city, demand_end, &mut rng);
        let riders: Vec<SimRider> = (0..p.riders)
            .map(|i| SimRider {
                id: format!("r{i}"),
                speed: p.dispatch.speed_mps * (1.0 + p.speed_spread * fleet.gen_range(-1.0..=1.0)),
                anchor: city.random_point(&mut fleet),
                leg: None,
                route: Vec::new(),
                version: 0,
                offer: None,
                metres: 0.0,
                busy_since: None,
            })
            .collect();
        let end = demand_end + (p.drain_hours * HOUR as f64) as i64;
        let hours = (end / HOUR + 2) as usize;
        let mut e = Engine {
            p,
            policy,
            rng: stream(2),
            state: vec![OrderState::default(); orders.len()],
            order_ix: orders
                .iter()
                .enumerate()
                .map(|(i, o)| (o.id.clone(), i))
                .collect(),
            rider_ix: riders
                .iter()
                .enumerate()
                .map(|(i, r)| (r.id.clone(), i))
                .collect(),
            orders,
            riders,
            queue: BinaryHeap::new(),
            seq: 0,
            waiting: BTreeSet::new(),
            serial: 0,
            resolved: 0,
            demand_end,
            end,
            busy_by_hour: vec![0; hours],
            offers: Offers::default(),
            round_micros: Vec::new(),
            max_orders: 0,
            max_riders: 0,
        };
        for i in 0..e.orders.len() {
            e.push(e.orders[i].placed, Event::Place(i));
        }
        e.push(0, Event::Round);
        Ok(e)
    }

    fn push(&mut self, t: i64, ev: Event) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn greedy(&self) -> bool {
        self.p.policy == PolicyKind::Greedy
    }

    pub(super) fn run(mut self) -> Result<Report, SimError> {
        let mut now = 0;
        while let Some(Reverse((t, _, ev))) = self.queue.pop() {
            if t > self.end {
                break;
            }
            now = t;
            match ev {
                Event::Place(i) => {
                    self.waiting.insert(i);
                    let cancel = t + (self.p.cancel_after_min * MINUTE as f64) as i64;
                    self.push(cancel, Event::Cancel(i));
                    if self.greedy() {
                        self.dispatch(t);
                    }
                }
                Event::Round => {
                    self.dispatch(t);
                    let next = t + self.p.dispatch.batch_ms as i64;
                    if next <= self.end && !self.finished(t) {
                        self.push(next, Event::Round);
                    }
                }
                Event::Answer {
                    order,
                    serial,
                    accept,
                } => self.answer(t, order, serial, accept),
                Event::StopDone { rider, version } => self.stop_done(t, rider, version),
                Event::Cancel(i) => self.cancel(t, i),
            }
            if self.finished(t) {
                break;
            }
        }
        for r in 0..self.riders.len() {
            if let Some(s) = self.riders[r].busy_since.take() {
                self.add_busy(s, now);
            }
        }
        Ok(self.report())
    }

    fn finished(&self, t: i64) -> bool {
        t >= self.demand_end && self.resolved == self.orders.len()
    }

    /// One call of the policy with everything waiting and everyone available.
    fn dispatch(&mut self, now: i64) {
        let orders: Vec<WaitingOrder> = self
            .waiting
            .iter()
            .filter(|&&i| self.state[i].offer.is_none())
            .map(|&i| {
                let o = &self.orders[i];
                WaitingOrder {
                    id: o.id.clone(),
                    pickup: o.pickup,
                    dropoff: o.dropoff,
                    waiting_since_ms: o.placed,
                    ready_at_ms: o.ready,
                    promised_at_ms: o.promised,
                    declined: self.state[i].declined.clone(),
                }
            })
            .collect();
        if orders.is_empty() {
            return;
        }
        let stacking = self.p.policy == PolicyKind::Stacked;
        let riders: Vec<AvailableRider> = self
            .riders
            .iter()
            .filter(|r| r.offer.is_none() && (stacking || r.route.is_empty()))
            .map(|r| AvailableRider {
                id: r.id.clone(),
                position: r.position(now),
                route: r.route.clone(),
            })
            .collect();
        if riders.is_empty() {
            return;
        }
        let started = Instant::now();
        let offers = self.policy.plan(now, &orders, &riders);
        self.round_micros
            .push(started.elapsed().as_secs_f64() * 1e6);
        self.max_orders = self.max_orders.max(orders.len());
        self.max_riders = self.max_riders.max(riders.len());
        for offer in offers {
            let (Some(&oi), Some(&ri)) = (
                self.order_ix.get(&offer.order_id),
                self.rider_ix.get(&offer.rider_id),
            ) else {
                self.offers.contract_violations += 1;
                continue;
            };
            let st = &self.state[oi];
            if st.offer.is_some()
                || st.assigned.is_some()
                || st.cancelled
                || st.declined.contains(&offer.rider_id)
                || self.riders[ri].offer.is_some()
            {
                self.offers.contract_violations += 1;
                continue;
            }
            self.serial += 1;
            let serial = self.serial;
            self.state[oi].offer = Some(Pending {
                rider: ri,
                serial,
                offer,
            });
            self.riders[ri].offer = Some(oi);
            self.offers.made += 1;
            let accept = !self.rng.gen_bool(self.p.decline_prob);
            let delay = self.rng.gen_range(self.p.answer_ms.0..=self.p.answer_ms.1);
            self.push(
                now + delay,
                Event::Answer {
                    order: oi,
                    serial,
                    accept,
                },
            );
        }
    }

    fn answer(&mut self, now: i64, order: usize, serial: u64, accept: bool) {
        let live = self.state[order]
            .offer
            .as_ref()
            .is_some_and(|p| p.serial == serial);
        if !live {
            return;
        }
        let Some(p) = self.state[order].offer.take() else {
            return;
        };
        self.riders[p.rider].offer = None;
        if !accept {
            self.offers.declined += 1;
            let id = self.riders[p.rider].id.clone();
            self.state[order].declined.insert(id);
            if self.greedy() {
                self.dispatch(now);
            }
            return;
        }
        self.offers.accepted += 1;
        if p.offer.route.iter().any(|s| s.order_id != p.offer.order_id) {
            self.offers.stacked += 1;
        }
        let st = &mut self.state[order];
        st.assigned = Some(now);
        st.pickup_distance_m = p.offer.distance_m;
        self.waiting.remove(&order);
        let route: Vec<Stop> = p
            .offer
            .route
            .into_iter()
            .filter(|s| !self.made(s))
            .collect();
        self.set_route(p.rider, route, now);
    }

    /// Whether a stop was made already (the route in an offer predates its answer).
    fn made(&self, s: &Stop) -> bool {
        let Some(&i) = self.order_ix.get(&s.order_id) else {
            return true;
        };
        match s.kind {
            StopKind::Pickup => self.state[i].picked.is_some(),
            StopKind::Dropoff => self.state[i].delivered.is_some(),
        }
    }

    fn set_route(&mut self, ri: usize, route: Vec<Stop>, now: i64) {
        let r = &mut self.riders[ri];
        let same_target = match (&r.leg, r.route.first(), route.first()) {
            (Some(_), Some(a), Some(b)) => a.order_id == b.order_id && a.kind == b.kind,
            _ => false,
        };
        r.route = route;
        if same_target {
            return;
        }
        let pos = r.position(now);
        if let Some(l) = r.leg.take() {
            r.metres += haversine_m(l.from, pos);
        }
        self.start_leg(ri, now, pos);
    }

    /// Sends the rider towards the first stop of its route (or leaves it idle at `from`).
    fn start_leg(&mut self, ri: usize, now: i64, from: Location) {
        let service = self.p.dispatch.service_ms;
        let r = &mut self.riders[ri];
        r.version += 1;
        let Some(target) = r.route.first() else {
            r.leg = None;
            r.anchor = from;
            if let Some(s) = r.busy_since.take() {
                self.add_busy(s, now);
            }
            return;
        };
        r.busy_since.get_or_insert(now);
        let metres = haversine_m(from, target.location);
        let arrive = now + (metres / r.speed * 1000.0).round() as i64;
        let begin = match target.kind {
            StopKind::Pickup => arrive.max(target.ready_at_ms),
            StopKind::Dropoff => arrive,
        };
        r.leg = Some(RideLeg {
            from,
            to: target.location,
            depart: now,
            arrive,
            metres,
        });
        let version = r.version;
        self.push(begin + service, Event::StopDone { rider: ri, version });
    }

    fn stop_done(&mut self, now: i64, ri: usize, version: u64) {
        let r = &mut self.riders[ri];
        if r.version != version || r.route.is_empty() {
            return;
        }
        let Some(leg) = r.leg.take() else {
            return;
        };
        r.metres += leg.metres;
        let stop = r.route.remove(0);
        if let Some(&oi) = self.order_ix.get(&stop.order_id) {
            match stop.kind {
                StopKind::Pickup => {
                    self.state[oi].picked = Some(leg.arrive.max(stop.ready_at_ms));
                }
                StopKind::Dropoff => {
                    self.state[oi].delivered = Some(leg.arrive);
                    self.resolved += 1;
                }
            }
        }
        self.start_leg(ri, now, leg.to);
        if self.riders[ri].route.is_empty() && self.greedy() {
            self.dispatch(now);
        }
    }

    fn cancel(&mut self, now: i64, i: usize) {
        let st = &mut self.state[i];
        if st.assigned.is_some() || st.cancelled {
            return;
        }
        st.cancelled = true;
        self.resolved += 1;
        self.waiting.remove(&i);
        if let Some(p) = self.state[i].offer.take() {
            self.riders[p.rider].offer = None;
            if self.greedy() {
                self.dispatch(now);
            }
        }
    }

    /// Adds a busy interval to the per-hour tally.
    fn add_busy(&mut self, from: i64, to: i64) {
        let mut t = from;
        while t < to {
            let h = (t / HOUR) as usize;
            let edge = ((t / HOUR) + 1) * HOUR;
            let upto = edge.min(to);
            if let Some(slot) = self.busy_by_hour.get_mut(h) {
                *slot += upto - t;
            }
            t = upto;
        }
    }

    fn report(self) -> Report {
        let p = self.p;
        let (mut click, mut assign, mut pickup) = (Vec::new(), Vec::new(), Vec::new());
        let mut out = Outcomes {
            placed: self.orders.len(),
            ..Outcomes::default()
        };
        for (o, s) in self.orders.iter().zip(&self.state) {
            if let Some(d) = s.delivered {
                out.delivered += 1;
                click.push((d - o.placed) as f64 / MINUTE as f64);
                if d > o.promised {
                    out.late += 1;
                }
            }
            match s.assigned {
                Some(a) => {
                    assign.push((a - o.placed) as f64 / 1000.0);
                    pickup.push(s.pickup_distance_m);
                    if s.delivered.is_none() {
                        out.in_flight_at_end += 1;
                    }
                }
                None => out.unassigned += 1,
            }
        }
        out.late_share = ratio(out.late as f64, out.delivered as f64);
        let delivered = out.delivered as f64;
        let busy_total: i64 = self.busy_by_hour.iter().sum();
        let demand_hours = (self.demand_end as f64 / HOUR as f64).max(1e-9);
        let busy_in_demand: i64 = self
            .busy_by_hour
            .iter()
            .enumerate()
            .map(|(h, b)| {
                let start = h as i64 * HOUR;
                let covered = (self.demand_end - start).clamp(0, HOUR);
                b * covered / HOUR
            })
            .sum();
        let riders = p.riders.max(1) as f64;
        let productivity = Productivity {
            orders_per_rider_hour: delivered / (riders * demand_hours),
            orders_per_busy_rider_hour: ratio(delivered, busy_total as f64 / HOUR as f64),
            km_per_order: ratio(
                self.riders.iter().map(|r| r.metres).sum::<f64>() / 1000.0,
                delivered,
            ),
            utilisation: busy_in_demand as f64 / (riders * self.demand_end.max(1) as f64),
        };
        let peak = self.peak(riders);
        Report {
            params: p.clone(),
            orders: out,
            click_to_door_min: Spread::of(&click),
            time_to_assign_s: Spread::of(&assign),
            pickup_distance_m: Spread::of(&pickup),
            pickup_distance_total_km: pickup.iter().sum::<f64>() / 1000.0,
            offers: self.offers.clone(),
            productivity,
            peak,
            compute: Compute {
                rounds: self.round_micros.len(),
                micros: Spread::of(&self.round_micros),
                max_micros: self.round_micros.iter().copied().fold(0.0, f64::max),
                max_orders: self.max_orders,
                max_riders: self.max_riders,
            },
        }
    }

    /// The whole hour of demand with the most orders placed.
    fn peak(&self, riders: f64) -> Peak {
        let whole_hours = (self.demand_end / HOUR).max(1);
        let in_hour = |t: i64, h: i64| t >= h * HOUR && t < (h + 1) * HOUR;
        let Some(h) = (0..whole_hours).max_by_key(|&h| {
            (
                self.orders.iter().filter(|o| in_hour(o.placed, h)).count(),
                -h,
            )
        }) else {
            return Peak::default();
        };
        let placed = self.orders.iter().filter(|o| in_hour(o.placed, h)).count();
        let delivered = self
            .state
            .iter()
            .filter(|s| s.delivered.is_some_and(|d| in_hour(d, h)))
            .count();
        let (mut done, mut late) = (0usize, 0usize);
        for (o, s) in self.orders.iter().zip(&self.state) {
            if let (true, Some(d)) = (in_hour(o.placed, h), s.delivered) {
                done += 1;
                late += usize::from(d > o.promised);
            }
        }
        let busy_h = self.busy_by_hour.get(h as usize).copied().unwrap_or(0) as f64 / HOUR as f64;
        Peak {
            start_hour: self.p.start_hour + h as f64,
            placed,
            delivered,
            orders_per_rider_hour: delivered as f64 / riders,
            orders_per_busy_rider_hour: ratio(delivered as f64, busy_h),
            late_share: ratio(late as f64, done as f64),
        }
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Orders over the demand hours: a Poisson process thinned to the demand curve.
fn generate_orders(
    p: &SimParams,
    city: &City,
    demand_end: i64,
    rng: &mut ChaCha8Rng,
) -> Vec<SimOrder> {
    const SAMPLES: usize = 1000;
    let shape_at = |t: i64| demand_shape((p.start_hour + t as f64 / HOUR as f64) % 24.0);
    let samples: Vec<f64> = (0..=SAMPLES)
        .map(|k| shape_at(demand_end * k as i64 / SAMPLES as i64))
        .collect();
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let top = samples.iter().copied().fold(0.0, f64::max) * 1.01;
    // Orders per ms at the curve's top.
    let max_rate = p.orders_per_hour / HOUR as f64 * top / mean;
    let mut orders = Vec::new();
    let mut t = 0.0f64;
    loop {
        let u: f64 = rng.gen_range(f64::EPSILON..1.0);
        t += -u.ln() / max_rate;
        if t >= demand_end as f64 {
            break;
        }
        let at = t as i64;
        if rng.gen::<f64>() * top > shape_at(at) {
            continue;
        }
        let m = city.pick_merchant(rng);
        let pickup = city.merchants[m];
        let dropoff = city.customer_of(pickup, rng);
        let prep = rng.gen_range(p.prep_min.0..=p.prep_min.1) * MINUTE as f64;
        let ready = at + prep as i64;
        let ride = haversine_m(pickup, dropoff) / p.dispatch.speed_mps * 1000.0;
        let promised = ready + (p.promise_slack_min * MINUTE as f64 + ride) as i64;
        orders.push(SimOrder {
            id: format!("o{}", orders.len()),
            placed: at,
            pickup,
            dropoff,
            ready,
            promised,
        });
    }
    orders
}
