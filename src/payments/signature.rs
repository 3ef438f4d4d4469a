//! Callback signatures: `Waimai-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! `"{t}.{raw body}"` with the shared secret, as Stripe signs its webhooks. The timestamp is
//! part of what is signed, so a captured callback cannot be replayed outside the tolerance.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header name.
pub const HEADER: &str = "waimai-signature";

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No header, or not `t=..,v1=..`.
    #[error("missing or malformed signature header")]
    Malformed,
    /// The HMAC does not match.
    #[error("signature does not match")]
    Mismatch,
    /// The timestamp is too far from now.
    #[error("signature timestamp is {0} s away from now, outside the tolerance")]
    Stale(i64),
}

/// The header value for `body` signed at `t` (unix seconds).
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body)))
}

fn mac(secret: &str, t: i64, body: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

/// Checks `header` against `body`: well-formed, matching (in constant time), and signed within
/// `tolerance_s` of `now_s`.
pub fn verify(
    secret: &str,
    header: Option<&str>,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Malformed)?;
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1.push(v.to_string()),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if v1.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let expected =
        HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    let mut matched = false;
    for candidate in v1 {
        let Ok(bytes) = hex::decode(&candidate) else {
            continue;
        };
        let mut m = expected.clone();
        m.update(t.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        if m.verify_slice(&bytes).is_ok() {
            matched = true;
        }
    }
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    // Checked after the HMAC, so a forged header learns nothing from the timestamp answer.
    if (now_s - t).abs() > tolerance_s {
        return Err(SignatureError::Stale(now_s - t));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_tampering_does_not() {
        let body = br#"{"id":"evt_1"}"#;
        let h = sign("s3cret", 1_700_000_000, body);
        assert_eq!(verify("s3cret", Some(&h), body, 1_700_000_010, 300), Ok(()));
        assert_eq!(
            verify("other", Some(&h), body, 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", Some(&h), br#"{"id":"evt_2"}"#, 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", Some(&h), body, 1_700_000_301, 300),
            Err(SignatureError::Stale(301))
        );
        assert_eq!(
            verify("s3cret", None, body, 1_700_000_000, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify("s3cret", Some("v1=00"), body, 1_700_000_000, 300),
            Err(SignatureError::Malformed)
        );
        // A tampered timestamp no longer matches the signature.
        let moved = h.replace("t=1700000000", "t=1700000100");
        assert_eq!(
            verify("s3cret", Some(&moved), body, 1_700_000_100, 300),
            Err(SignatureError::Mismatch)
        );
    }
}
