//! Bearer tokens: HS256 JWTs whose `sub` is the caller's id and `role` its role.
//!
//! A client sends the same token with every request, so a verified token is remembered (in a
//! fixed table of slots, by a keyed hash of the whole token) until its expiry: the next request
//! with it costs a hash and a comparison instead of HMAC-SHA256 and two JSON parses. Only
//! tokens that passed verification are kept, a kept one is refused once expired exactly as
//! verification would refuse it, and the secret cannot change while the node runs.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

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

/// Seconds past `exp` a token is still accepted (clock skew between issuer and node).
const LEEWAY_SECS: u64 = 5;

/// Slots of the verified-token table: with 5,000 active tokens, about 7% share a slot.
const VERIFIED_SLOTS: usize = 1 << 16;

/// Signs and checks tokens with one secret.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    verified: Arc<Verified>,
}

/// A token that passed verification, and what it said.
struct Seen {
    token: Box<str>,
    caller: Caller,
    exp: u64,
}

/// Verified tokens, one per slot (a newer token in a slot replaces the older).
struct Verified {
    slots: Box<[Mutex<Option<Seen>>]>,
    hasher: RandomState,
}

impl Verified {
    fn new() -> Self {
        Verified {
            slots: (0..VERIFIED_SLOTS).map(|_| Mutex::new(None)).collect(),
            hasher: RandomState::new(),
        }
    }

    fn slot(&self, token: &str) -> &Mutex<Option<Seen>> {
        &self.slots[self.hasher.hash_one(token) as usize % self.slots.len()]
    }

    /// The caller of `token` if it was verified and has not expired at `now` (seconds).
    fn get(&self, token: &str, now: u64) -> Option<Caller> {
        let slot = self.slot(token).lock().ok()?;
        let seen = slot.as_ref()?;
        (same(seen.token.as_bytes(), token.as_bytes()) && seen.exp + LEEWAY_SECS >= now)
            .then(|| seen.caller.clone())
    }

    fn put(&self, token: &str, caller: &Caller, exp: u64) {
        if let Ok(mut slot) = self.slot(token).lock() {
            *slot = Some(Seen {
                token: token.into(),
                caller: caller.clone(),
                exp,
            });
        }
    }
}

/// Byte equality in time that depends only on the lengths, so comparing a guess with a
/// remembered token says nothing about how much of it matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn now_secs() -> u64 {
    (crate::domain::now_ms() / 1000).max(0) as u64
}

impl Auth {
    /// Keys from the shared secret.
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        Auth {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            verified: Arc::new(Verified::new()),
        }
    }

    /// A signed token for `sub` as `role`, valid for `ttl_secs`.
    pub fn mint(
        &self,
        role: Role,
        sub: &str,
        ttl_secs: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = now_secs();
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
        let token = token.trim();
        if let Some(caller) = self.verified.get(token, now_secs()) {
            return Ok(caller);
        }
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| ApiError::Unauthorized(format!("invalid token: {e}")))?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > 128 {
            return Err(ApiError::Unauthorized(
                "token subject must be 1..=128 characters".into(),
            ));
        }
        let caller = Caller {
            role: data.claims.role,
            id: data.claims.sub,
        };
        self.verified.put(token, &caller, data.claims.exp);
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(t: &str) -> Option<String> {
        Some(format!("Bearer {t}"))
    }

    #[test]
    fn a_remembered_token_answers_as_verification_did() {
        let auth = Auth::new("s3cret");
        let token = auth.mint(Role::Merchant, "m-1", 60).expect("mint");
        for _ in 0..2 {
            let c = auth.caller(bearer(&token).as_deref()).expect("valid");
            assert_eq!((c.role, c.id.as_str()), (Role::Merchant, "m-1"));
        }
        assert!(auth.verified.get(&token, now_secs()).is_some(), "kept");
    }

    #[test]
    fn a_remembered_token_is_refused_once_expired() {
        let auth = Auth::new("s3cret");
        let token = auth.mint(Role::Customer, "c-1", 60).expect("mint");
        auth.caller(bearer(&token).as_deref()).expect("valid");
        let exp = now_secs() + 60;
        assert!(auth.verified.get(&token, exp + LEEWAY_SECS).is_some());
        assert!(auth.verified.get(&token, exp + LEEWAY_SECS + 2).is_none());
        // And verification itself refuses an expired token (so it is never kept).
        let old = Claims {
            sub: "c-1".into(),
            role: Role::Customer,
            exp: now_secs() - 60,
            iat: now_secs() - 120,
        };
        let expired = encode(&Header::new(Algorithm::HS256), &old, &auth.encoding).expect("sign");
        assert!(auth.caller(bearer(&expired).as_deref()).is_err());
        assert!(auth.verified.get(&expired, now_secs()).is_none());
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused_after_a_good_one_was_kept() {
        let auth = Auth::new("s3cret");
        let good = auth.mint(Role::Customer, "c-1", 60).expect("mint");
        auth.caller(bearer(&good).as_deref()).expect("valid");
        let forged = Auth::new("guess")
            .mint(Role::Admin, "c-1", 60)
            .expect("mint");
        assert!(auth.caller(bearer(&forged).as_deref()).is_err());
        // A tampered copy of the kept token (one character of its signature changed).
        let mut tampered = good.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert!(auth.caller(bearer(&tampered).as_deref()).is_err());
    }

    #[test]
    fn same_compares_whole_slices() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(same(b"", b""));
    }
}
