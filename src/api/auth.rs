//! Bearer tokens: HS256 JWTs whose `sub` is the caller's id and `role` its role.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::domain::{Caller, Role};

/// The claims waimai signs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: customer, merchant or rider id, or an operator name.
    pub sub: String,
    /// What the bearer may do.
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
}

/// Signs and checks tokens with one secret.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Auth {
    /// Keys from the shared secret.
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        Auth {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// A signed token for `sub` as `role`, valid for `ttl_secs`.
    pub fn mint(
        &self,
        role: Role,
        sub: &str,
        ttl_secs: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = (crate::domain::now_ms() / 1000) as u64;
        let claims = Claims {
            sub: sub.to_string(),
            role,
            exp: now + ttl_secs,
            iat: now,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// The caller behind an `Authorization: Bearer ...` header value.
    pub fn caller(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let header = header.ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::Unauthorized("authorization must be `Bearer <token>`".into())
            })?;
        let data = decode::<Claims>(token.trim(), &self.decoding, &self.validation)
            .map_err(|e| ApiError::Unauthorized(format!("invalid token: {e}")))?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > 128 {
            return Err(ApiError::Unauthorized(
                "token subject must be 1..=128 characters".into(),
            ));
        }
        Ok(Caller {
            role: data.claims.role,
            id: data.claims.sub,
        })
    }
}
