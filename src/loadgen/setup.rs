//! The world a run creates for itself before any load: merchants at random spots around a city
//! centre with menus of `--skus` SKUs, riders (created, put online later by their simulators),
//! and signed tokens for every actor.

use futures::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::http::Http;
use super::{LoadgenError, Plan, TOKEN_TTL_SECS};
use crate::api::Auth;
use crate::domain::{Location, Role};

/// Where the simulated city is (Shanghai's People's Square).
pub(crate) const CENTRE: Location = Location {
    lat: 31.2304,
    lng: 121.4737,
};

/// Half the side of the square merchants, riders and customers are scattered over, degrees.
const SPREAD: f64 = 0.03;

/// Setup requests in flight at once.
const SETUP_PARALLELISM: usize = 32;

/// A merchant the run created.
#[derive(Debug, Clone)]
pub(crate) struct SimMerchant {
    /// Id.
    pub id: String,
    /// Its token.
    pub token: String,
    /// SKU codes on its menu.
    pub skus: Vec<String>,
}

/// A rider the run created.
#[derive(Debug, Clone)]
pub(crate) struct SimRider {
    /// Id.
    pub id: String,
    /// Its token.
    pub token: String,
}

/// A customer: any id works, so these are never registered; the id (`lg-RUN-cN`) lives in
/// the token only.
#[derive(Debug, Clone)]
pub(crate) struct Customer {
    /// Its token.
    pub token: String,
}

/// Everything set up.
#[derive(Debug)]
pub(crate) struct World {
    /// Merchants with their menus.
    pub merchants: Vec<SimMerchant>,
    /// Riders (offline until their simulators start).
    pub riders: Vec<SimRider>,
    /// Customers.
    pub customers: Vec<Customer>,
    /// Stock every SKU started with.
    pub initial_stock: i64,
    /// Distinguishes this run's customers and idempotency keys from earlier runs'.
    pub run_id: String,
}

/// A random point in the city.
pub(crate) fn random_spot(rng: &mut impl Rng) -> Location {
    Location {
        lat: CENTRE.lat + rng.gen_range(-SPREAD..SPREAD),
        lng: CENTRE.lng + rng.gen_range(-SPREAD..SPREAD),
    }
}

/// A seeded or random RNG.
pub(crate) fn rng(seed: Option<u64>, stream: u64) -> rand::rngs::StdRng {
    match seed {
        Some(s) => {
            rand::rngs::StdRng::seed_from_u64(s.wrapping_mul(0x9E37_79B9).wrapping_add(stream))
        }
        None => rand::rngs::StdRng::from_entropy(),
    }
}

/// Creates merchants, menus and riders and signs customer tokens.
pub(crate) async fn build(
    plan: &Plan,
    http: &Http,
    auth: &Auth,
    admin: &str,
) -> Result<World, LoadgenError> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut rng = rng(plan.args.seed, 0);
    let spots: Vec<Location> = (0..plan.merchants).map(|_| random_spot(&mut rng)).collect();
    let skus: Vec<String> = if plan.args.scenario == super::Scenario::HotSku {
        vec!["hot-sku".to_string()]
    } else {
        (0..plan.skus).map(|i| format!("sku-{i}")).collect()
    };
    let merchants: Vec<Result<SimMerchant, LoadgenError>> =
        futures::stream::iter(spots.into_iter().enumerate().map(|(i, location)| {
            let skus = skus.clone();
            async move {
                let r = http
                    .post(
                        "/v1/merchants",
                        admin,
                        Some(&json!({"name": format!("Loadgen Kitchen {i}"), "location": location})),
                    )
                    .await;
                let id = created(r, "create merchant")?;
                let token = auth.mint(Role::Merchant, &id, TOKEN_TTL_SECS)?;
                let items: Vec<_> = skus
                    .iter()
                    .map(|s| json!({"sku": s, "name": format!("Dish {s}"), "price_cents": 1500, "stock": plan.stock}))
                    .collect();
                let r = http
                    .put(&format!("/v1/merchants/{id}/menu"), &token, &json!({ "items": items }))
                    .await;
                expect_ok(r, "set menu")?;
                let r = http.post(&format!("/v1/merchants/{id}/open"), &token, None).await;
                expect_ok(r, "open merchant")?;
                Ok(SimMerchant { id, token, skus })
            }
        }))
        .buffer_unordered(SETUP_PARALLELISM)
        .collect()
        .await;
    let merchants = merchants.into_iter().collect::<Result<Vec<_>, _>>()?;

    let riders: Vec<Result<SimRider, LoadgenError>> =
        futures::stream::iter((0..plan.riders).map(|i| async move {
            let r = http
                .post(
                    "/v1/riders",
                    admin,
                    Some(&json!({"name": format!("Loadgen Rider {i}")})),
                )
                .await;
            let id = created(r, "create rider")?;
            let token = auth.mint(Role::Rider, &id, TOKEN_TTL_SECS)?;
            Ok(SimRider { id, token })
        }))
        .buffer_unordered(SETUP_PARALLELISM)
        .collect()
        .await;
    let riders = riders.into_iter().collect::<Result<Vec<_>, _>>()?;

    let customers = (0..plan.customers)
        .map(|i| {
            let id = format!("lg-{run_id}-c{i}");
            let token = auth.mint(Role::Customer, &id, TOKEN_TTL_SECS)?;
            Ok(Customer { token })
        })
        .collect::<Result<Vec<_>, LoadgenError>>()?;
    tracing::info!(
        merchants = merchants.len(),
        riders = riders.len(),
        customers = customers.len(),
        "set up"
    );
    Ok(World {
        merchants,
        riders,
        customers,
        initial_stock: plan.stock,
        run_id,
    })
}

/// The `id` of a 201 response, or a setup error naming `what`.
fn created(r: super::http::Outcome, what: &str) -> Result<String, LoadgenError> {
    match r {
        Ok(r) if r.status == 201 => r
            .str("id")
            .ok_or_else(|| LoadgenError::Setup(format!("{what}: no id in {}", r.body()))),
        Ok(r) => Err(LoadgenError::Setup(format!(
            "{what}: HTTP {} {}",
            r.status,
            r.body()
        ))),
        Err(e) => Err(LoadgenError::Setup(format!("{what}: {}", e.0))),
    }
}

/// A setup error unless the response is 2xx.
fn expect_ok(r: super::http::Outcome, what: &str) -> Result<(), LoadgenError> {
    match r {
        Ok(r) if r.ok() => Ok(()),
        Ok(r) => Err(LoadgenError::Setup(format!(
            "{what}: HTTP {} {}",
            r.status,
            r.body()
        ))),
        Err(e) => Err(LoadgenError::Setup(format!("{what}: {}", e.0))),
    }
}
