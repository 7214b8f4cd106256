//! The webhook signature: `X-Orb-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! `"<t>.<body>"` with the shared secret (the scheme of Stripe's webhooks). A receiver recomputes
//! the HMAC over the timestamp it was given and the raw body, compares in constant time, and
//! refuses timestamps older than its tolerance (replays). See `docs/summaries.md`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "x-orb-signature";
/// The header carrying the summary id, so a receiver stores each summary once.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `timestamp`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(digest))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature is {0} s away from now, outside the tolerance")]
    Stale(i64),
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks a received `X-Orb-Signature` against the raw body, as a receiver should.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64, tolerance_secs: i64) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = vec![];
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let skew = now.saturating_sub(timestamp);
    if skew.abs() > tolerance_secs {
        return Err(SignatureError::Stale(skew));
    }
    // During a key rotation a sender may include several v1 values; one must match.
    if signatures
        .iter()
        .any(|s| mac(secret, timestamp, body).verify_slice(s).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let header = sign(b"secret", 1_700_000_000, b"{\"a\":1}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(verify(b"secret", &header, b"{\"a\":1}", 1_700_000_010, 300), Ok(()));
        assert_eq!(
            verify(b"secret", &header, b"{\"a\":2}", 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &header, b"{\"a\":1}", 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"secret", &header, b"{\"a\":1}", 1_700_001_000, 300),
            Err(SignatureError::Stale(1000))
        );
        let forged = header.replace("t=1700000000", "t=1700000900");
        assert_eq!(
            verify(b"secret", &forged, b"{\"a\":1}", 1_700_000_900, 300),
            Err(SignatureError::Mismatch),
            "the timestamp is signed too"
        );
        assert_eq!(verify(b"secret", "v1=zz", b"", 0, 300), Err(SignatureError::Malformed));
        assert_eq!(verify(b"secret", "t=1", b"", 1, 300), Err(SignatureError::Malformed));
    }

    /// The published test vector in docs/summaries.md, so receivers in other languages can check
    /// their implementation against this one.
    #[test]
    fn documented_vector() {
        assert_eq!(sign(b"whsec_test", 1_700_000_000, br#"{"roomId":"demo"}"#), DOC_VECTOR);
    }

    const DOC_VECTOR: &str = "t=1700000000,v1=13cac932b4b1a2838e92f7c2ee02f3a30cc3af0592563b4dfdd13cb8d4409d86";
}
