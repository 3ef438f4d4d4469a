//! Small value types shared by actors, store and API: locations, callers, clocks.

use serde::{Deserialize, Serialize};

/// A point on the map, WGS84 degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Latitude, -90..=90.
    #[schema(minimum = -90.0, maximum = 90.0)]
    pub lat: f64,
    /// Longitude, -180..=180.
    #[schema(minimum = -180.0, maximum = 180.0)]
    pub lng: f64,
}

impl Location {
    /// Checks the coordinates are finite and on the globe.
    pub fn validate(&self) -> Result<(), crate::Error> {
        if !(self.lat.is_finite() && (-90.0..=90.0).contains(&self.lat)) {
            return Err(crate::Error::Invalid("lat must be within -90..=90".into()));
        }
        if !(self.lng.is_finite() && (-180.0..=180.0).contains(&self.lng)) {
            return Err(crate::Error::Invalid(
                "lng must be within -180..=180".into(),
            ));
        }
        Ok(())
    }
}

/// Deserializes an integer that JSON may spell as a whole float (`5.0`): JSON Schema's
/// `integer`, which the OpenAPI document promises, includes those.
pub fn whole_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    match serde_json::Number::deserialize(d)? {
        n if n.is_i64() => n.as_i64().ok_or_else(|| D::Error::custom("not an integer")),
        n => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
                Ok(f as i64)
            }
            _ => Err(D::Error::custom(format!("expected an integer, got {n}"))),
        },
    }
}

/// The role a bearer token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Places, pays, cancels and confirms its own orders.
    Customer,
    /// Runs one merchant (its id is the token's subject).
    Merchant,
    /// Is one rider (its id is the token's subject).
    Rider,
    /// Operates the platform.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "customer" => Ok(Role::Customer),
            "merchant" => Ok(Role::Merchant),
            "rider" => Ok(Role::Rider),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?} (customer|merchant|rider|admin)"
            )),
        }
    }
}

/// Who is asking: every command carries it so each actor checks ownership itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The role from the token.
    pub role: Role,
    /// The token's subject: a customer, merchant or rider id, or an operator name.
    pub id: String,
}

impl Caller {
    /// An operator identity, used by internal flows (dispatch, timers, tests).
    pub fn system() -> Self {
        Caller {
            role: Role::Admin,
            id: "system".into(),
        }
    }

    /// True for admins.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// True when the caller is `role` with subject `id`, or an admin.
    pub fn is(&self, role: Role, id: &str) -> bool {
        self.is_admin() || (self.role == role && self.id == id)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new random entity id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
