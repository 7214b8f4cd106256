//! Room tokens: the JWT (HS256) every participant presents to signaling. The app backend mints
//! them for humans, the operator mints one per orb (role `ai`, scoped to its room, expiring with
//! its lifetime), signaling verifies them. Claims: `room`, `sub` (user id), `role`, `exp`.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Shortest signing key accepted: HS256 keys shorter than the hash output weaken it.
pub const MIN_SIGNING_KEY_BYTES: usize = 32;

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Coach,
    Client,
    Ai,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coach => "coach",
            Role::Client => "client",
            Role::Ai => "ai",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct RoomClaims {
    /// The only room this token opens.
    pub room: String,
    /// The user id signaling uses for this participant, whatever the join message says.
    pub sub: String,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch; at most [`MAX_TOKEN_TTL_SECONDS`] ahead.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// [`ROOM_TOKEN_AUDIENCE`]: marks the token as a room token, so nothing else signed with the
    /// key (a token meant for another service) opens a room.
    pub aud: String,
    /// The coaching session the call belongs to (the app backend's booking id). Optional: without
    /// it the room is the session. An orb's lifetime is a budget of its session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// An orb's token only: the uid of the AiOrb it was minted for. Signaling lets it in only
    /// while that AiOrb is the room's live one, so a token of an earlier orb of the room can
    /// neither replace nor impersonate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orb: Option<String>,
}

/// The `aud` of every room token.
pub const ROOM_TOKEN_AUDIENCE: &str = "orb-signaling";
/// How far ahead a room token's `exp` may be by default: a day (an orb's lifetime is at most a day;
/// its token adds the goodbye grace, within [`CLOCK_LEEWAY_SECONDS`]).
pub const MAX_TOKEN_TTL_SECONDS: u64 = 86_400;
/// Clock skew tolerated between the minting and the verifying machine.
pub const CLOCK_LEEWAY_SECONDS: u64 = 300;

impl RoomClaims {
    /// Claims for `sub` in `room` as `role`, issued now and valid for `ttl_seconds`.
    pub fn new(room: &str, sub: &str, role: Role, ttl_seconds: u64) -> Self {
        let now = unix_now();
        Self {
            room: room.to_owned(),
            sub: sub.to_owned(),
            role,
            exp: now + ttl_seconds,
            iat: now,
            aud: ROOM_TOKEN_AUDIENCE.to_owned(),
            session: None,
            orb: None,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no room token was presented")]
    Missing,
    #[error("the room token has expired")]
    Expired,
    #[error("the room token is for another room")]
    WrongRoom,
    #[error("the room token's signature does not match")]
    BadSignature,
    #[error("the token is not a room token (its audience is not orb-signaling)")]
    WrongAudience,
    #[error("the room token is valid for longer than signaling allows, or issued in the future")]
    TooLongLived,
    #[error("the room token is malformed: {0}")]
    Malformed(String),
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("the signing key must be at least {MIN_SIGNING_KEY_BYTES} bytes (got {0})")]
pub struct WeakKeyError(pub usize);

/// Why the signing key could not be loaded.
#[derive(Debug, Error)]
pub enum KeyLoadError {
    #[error("the signing key is required: set {SIGNING_KEY_ENV} or --signing-key-file ({SIGNING_KEY_FILE_ENV})")]
    Missing,
    #[error("set either {SIGNING_KEY_ENV} or --signing-key-file, not both")]
    Both,
    #[error("cannot read the signing key file {path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Weak(#[from] WeakKeyError),
}

/// The env variable holding the signing key itself (no flag: flags show in `ps`).
pub const SIGNING_KEY_ENV: &str = "ORB_SIGNING_KEY";
/// The env variable of `--signing-key-file`.
pub const SIGNING_KEY_FILE_ENV: &str = "ORB_SIGNING_KEY_FILE";

/// The one way every binary loads the shared key: the value of [`SIGNING_KEY_ENV`] or the content
/// of the key file, exactly one of them (an empty env value counts as unset), at least
/// [`MIN_SIGNING_KEY_BYTES`] after one trailing line break is dropped.
pub fn load_signing_key(env_value: Option<String>, file: Option<&std::path::Path>) -> Result<SigningKey, KeyLoadError> {
    let bytes = match (env_value.filter(|v| !v.is_empty()), file) {
        (Some(_), Some(_)) => return Err(KeyLoadError::Both),
        (None, None) => return Err(KeyLoadError::Missing),
        (Some(v), None) => v.into_bytes(),
        (None, Some(path)) => std::fs::read(path).map_err(|source| KeyLoadError::File {
            path: path.to_owned(),
            source,
        })?,
    };
    Ok(SigningKey::new(bytes)?)
}

/// A secret read from a file or a Secret often ends with one line break nobody meant as key
/// material. Only that is dropped (`\n` or `\r\n`): a random binary key may end in any byte,
/// and whoever signs with the same key must get the same bytes.
pub fn without_trailing_line_break(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    bytes
}

/// The shared HS256 secret of the operator and signaling.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, WeakKeyError> {
        let bytes = without_trailing_line_break(bytes.into());
        if bytes.len() < MIN_SIGNING_KEY_BYTES {
            return Err(WeakKeyError(bytes.len()));
        }
        Ok(Self(bytes))
    }

    pub fn mint(&self, claims: &RoomClaims) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(&self.0),
        )
        .expect("HS256 encoding of plain claims cannot fail")
    }

    /// A secret for `purpose` derived from the key (an HS256 MAC of it): reproducible by anyone
    /// holding the key, useless without it. Only the MAC is returned, never a token: a derived
    /// secret cannot be presented as a room token.
    pub fn derive(&self, purpose: &str) -> String {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({ "purpose": purpose }),
            &EncodingKey::from_secret(&self.0),
        )
        .expect("HS256 encoding of plain claims cannot fail");
        token.rsplit('.').next().unwrap_or_default().to_owned()
    }

    /// Verifies signature, audience, expiry, a lifetime of at most a day, and that the token opens
    /// `room`.
    pub fn verify(&self, token: &str, room: &str) -> Result<RoomClaims, AuthError> {
        self.verify_at(token, room, unix_now(), MAX_TOKEN_TTL_SECONDS)
    }

    /// [`SigningKey::verify`] with the clock (Unix seconds) and the longest accepted token life
    /// given.
    pub fn verify_at(&self, token: &str, room: &str, now: u64, max_ttl_secs: u64) -> Result<RoomClaims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // Only HS256: `alg: none`, HS512 or RS256 headers are refused before any key is used.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "iat", "aud"]);
        validation.set_audience(&[ROOM_TOKEN_AUDIENCE]);
        let data = jsonwebtoken::decode::<RoomClaims>(token, &DecodingKey::from_secret(&self.0), &validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                _ => AuthError::Malformed(e.to_string()),
            },
        )?;
        let claims = data.claims;
        // A token valid "forever" (exp 2^40) is a stolen credential that never dies.
        if claims.exp > now + max_ttl_secs + CLOCK_LEEWAY_SECONDS || claims.iat > now + CLOCK_LEEWAY_SECONDS {
            return Err(AuthError::TooLongLived);
        }
        if claims.room != room {
            return Err(AuthError::WrongRoom);
        }
        Ok(claims)
    }
}

/// Seconds since the Unix epoch, for `exp`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::new(vec![b; 32]).unwrap()
    }

    fn claims(room: &str, exp: u64) -> RoomClaims {
        RoomClaims {
            room: room.into(),
            sub: "coach-1".into(),
            role: Role::Coach,
            exp,
            session: None,
            iat: crate::auth::unix_now(),
            aud: crate::auth::ROOM_TOKEN_AUDIENCE.into(),
            orb: None,
        }
    }

    #[test]
    fn a_valid_token_opens_its_room_only() {
        let t = key(1).mint(&claims("room-a", unix_now() + 60));
        assert_eq!(key(1).verify(&t, "room-a").unwrap().sub, "coach-1");
        assert_eq!(key(1).verify(&t, "room-b"), Err(AuthError::WrongRoom));
    }

    #[test]
    fn bad_tokens_say_why() {
        let expired = key(1).mint(&claims("r", unix_now() - 3600));
        assert_eq!(key(1).verify(&expired, "r"), Err(AuthError::Expired));
        let other = key(2).mint(&claims("r", unix_now() + 60));
        assert_eq!(key(1).verify(&other, "r"), Err(AuthError::BadSignature));
        assert_eq!(key(1).verify("", "r"), Err(AuthError::Missing));
        assert!(matches!(key(1).verify("not.a.jwt", "r"), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn short_keys_are_refused_and_trailing_newlines_ignored() {
        assert_eq!(SigningKey::new(b"short".to_vec()).unwrap_err(), WeakKeyError(5));
        let mut k = vec![7u8; 32];
        k.push(b'\n');
        let t = SigningKey::new(k).unwrap().mint(&claims("r", unix_now() + 60));
        assert!(key(7).verify(&t, "r").is_ok());
        let mut crlf = vec![7u8; 32];
        crlf.extend(b"\r\n");
        let t = SigningKey::new(crlf).unwrap().mint(&claims("r", unix_now() + 60));
        assert!(key(7).verify(&t, "r").is_ok());
    }

    /// A day is the longest a room token lives; issued in the future (beyond clock skew) is refused.
    #[test]
    fn long_lived_and_future_tokens_are_refused() {
        let k = key(1);
        let now = 1_800_000_000;
        let mut c = claims("r", now + MAX_TOKEN_TTL_SECONDS);
        c.iat = now;
        assert!(k.verify_at(&k.mint(&c), "r", now, MAX_TOKEN_TTL_SECONDS).is_ok());
        c.exp = now + MAX_TOKEN_TTL_SECONDS + CLOCK_LEEWAY_SECONDS + 1;
        assert_eq!(
            k.verify_at(&k.mint(&c), "r", now, MAX_TOKEN_TTL_SECONDS),
            Err(AuthError::TooLongLived)
        );
        c.exp = now + 60;
        c.iat = now + CLOCK_LEEWAY_SECONDS + 1;
        assert_eq!(
            k.verify_at(&k.mint(&c), "r", now, MAX_TOKEN_TTL_SECONDS),
            Err(AuthError::TooLongLived)
        );
        c.iat = now;
        c.aud = "another-service".into();
        assert_eq!(
            k.verify_at(&k.mint(&c), "r", now, MAX_TOKEN_TTL_SECONDS),
            Err(AuthError::WrongAudience)
        );
    }

    /// Every binary loads the key the same way: exactly one source, an empty env value is unset,
    /// a file's one trailing line break is not key material.
    #[test]
    fn every_binary_loads_the_key_by_the_same_rules() {
        let dir = std::env::temp_dir().join(format!("orb-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, format!("{}\n", "k".repeat(32))).unwrap();
        let from_file = load_signing_key(Some(String::new()), Some(&file)).unwrap();
        let from_env = load_signing_key(Some("k".repeat(32)), None).unwrap();
        let claims = claims("r", unix_now() + 60);
        assert_eq!(
            from_file.mint(&claims),
            from_env.mint(&claims),
            "the same key either way"
        );
        assert!(matches!(
            load_signing_key(Some("k".repeat(32)), Some(&file)),
            Err(KeyLoadError::Both)
        ));
        assert!(matches!(load_signing_key(None, None), Err(KeyLoadError::Missing)));
        assert!(matches!(
            load_signing_key(None, Some(&dir.join("absent"))),
            Err(KeyLoadError::File { .. })
        ));
        assert!(matches!(
            load_signing_key(Some("short".into()), None),
            Err(KeyLoadError::Weak(_))
        ));
        let message = KeyLoadError::Missing.to_string();
        assert!(
            message.contains(SIGNING_KEY_ENV) && message.contains("--signing-key-file"),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn binary_keys_keep_their_trailing_bytes() {
        // Ends in a space: a key in its own right, not the same as the key without it.
        let mut spaced = vec![7u8; 32];
        spaced.push(b' ');
        let t = SigningKey::new(spaced).unwrap().mint(&claims("r", unix_now() + 60));
        assert_eq!(key(7).verify(&t, "r"), Err(AuthError::BadSignature));
    }
}
