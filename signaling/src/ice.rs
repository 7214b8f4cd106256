//! The ICE servers participants get from signaling (`GET /ice-servers` and the `ice-servers`
//! message): the configured STUN URLs as they are, and the TURN URLs with a credential minted for
//! the participant by the TURN REST convention — what coturn's `use-auth-secret` /
//! `static-auth-secret` and most managed TURN services accept:
//!
//! * username = `<expiry, Unix seconds>:<user id>`;
//! * credential = base64(HMAC-SHA1(shared secret, username)).
//!
//! The TURN server recomputes the credential from the username with the same secret and refuses
//! it after the expiry, so no per-user state is shared and nothing has to be revoked. The expiry
//! is `--turn-credential-ttl` from now, but never later than the room token's own expiry: a
//! credential outlives no token.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use orb_protocol::{IceScheme, IceServer, IceServerList, IceUrlError, check_ice_url};

/// The longest TURN username: STUN's USERNAME attribute holds fewer than 509 bytes (RFC 8489
/// §14.3); a longer user id is cut (at a character boundary) so the relay still accepts it.
pub const MAX_TURN_USERNAME_BYTES: usize = 508;

/// The user id of TURN credentials minted without a room token (`--auth none`: nobody is known).
pub const ANONYMOUS_USER: &str = "anonymous";

/// The shared secret of the TURN REST convention. Never printed.
#[derive(Clone)]
pub struct TurnSecret(Vec<u8>);

impl std::fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnSecret(..)")
    }
}

impl TurnSecret {
    /// The secret from a file's content, white space around it dropped; `None` when nothing is
    /// left.
    pub fn from_file_content(content: &[u8]) -> Option<Self> {
        let secret = content.trim_ascii();
        (!secret.is_empty()).then(|| Self(secret.to_vec()))
    }
}

/// Why the ICE settings are refused at start-up.
#[derive(Debug, thiserror::Error)]
pub enum IceConfigError {
    #[error("--ice-servers: {0}")]
    Url(#[from] IceUrlError),
    #[error(
        "--ice-servers lists TURN URLs ({0}) but no --turn-secret-file: TURN credentials are minted from the relay's shared secret (coturn's static-auth-secret)"
    )]
    TurnWithoutSecret(String),
}

/// The configured servers and how TURN credentials are minted.
#[derive(Clone, Debug, Default)]
pub struct IceSettings {
    stun_urls: Vec<String>,
    turn_urls: Vec<String>,
    /// Set whenever `turn_urls` is not empty.
    turn_secret: Option<TurnSecret>,
    credential_ttl: Duration,
}

impl IceSettings {
    /// Checks every URL (empty entries are skipped) and that TURN URLs have a secret to mint
    /// their credentials with.
    pub fn new(
        urls: &[String],
        turn_secret: Option<TurnSecret>,
        credential_ttl: Duration,
    ) -> Result<Self, IceConfigError> {
        let mut settings = Self {
            turn_secret,
            credential_ttl,
            ..Self::default()
        };
        for url in urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
            match check_ice_url(url)? {
                IceScheme::Stun => settings.stun_urls.push(url.to_owned()),
                IceScheme::Turn | IceScheme::Turns => settings.turn_urls.push(url.to_owned()),
            }
        }
        if !settings.turn_urls.is_empty() && settings.turn_secret.is_none() {
            return Err(IceConfigError::TurnWithoutSecret(settings.turn_urls.join(", ")));
        }
        Ok(settings)
    }

    /// Whether any server is configured (the `ice-servers` message is sent only then).
    pub fn is_configured(&self) -> bool {
        !self.stun_urls.is_empty() || !self.turn_urls.is_empty()
    }

    /// Whether answers carry a TURN credential (what `turn_credentials_issued_total` counts).
    pub fn issues_credentials(&self) -> bool {
        !self.turn_urls.is_empty()
    }

    /// The list for `user_id` at `now` (Unix seconds), whose room token expires at `token_expiry`
    /// (`None` without tokens). Empty, with `ttl` 0, when nothing is configured.
    pub fn list_for(&self, user_id: &str, token_expiry: Option<u64>, now: u64) -> IceServerList {
        if !self.is_configured() {
            return IceServerList::default();
        }
        let mut expiry = now.saturating_add(self.credential_ttl.as_secs());
        if let Some(token_expiry) = token_expiry {
            expiry = expiry.min(token_expiry);
        }
        let mut ice_servers = Vec::with_capacity(2);
        if !self.stun_urls.is_empty() {
            ice_servers.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if let Some(secret) = self.turn_secret.as_ref().filter(|_| !self.turn_urls.is_empty()) {
            let username = turn_username(expiry, user_id);
            ice_servers.push(IceServer {
                urls: self.turn_urls.clone(),
                credential: Some(turn_credential(secret, &username)),
                username: Some(username),
            });
        }
        IceServerList {
            ice_servers,
            ttl: expiry.saturating_sub(now),
        }
    }
}

/// `<expiry>:<user id>`, cut to [`MAX_TURN_USERNAME_BYTES`].
pub fn turn_username(expiry: u64, user_id: &str) -> String {
    let mut username = format!("{expiry}:{user_id}");
    if username.len() > MAX_TURN_USERNAME_BYTES {
        let mut end = MAX_TURN_USERNAME_BYTES;
        while !username.is_char_boundary(end) {
            end -= 1;
        }
        username.truncate(end);
    }
    username
}

/// base64(HMAC-SHA1(secret, username)), standard alphabet with padding (as coturn computes it).
pub fn turn_credential(secret: &TurnSecret, username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&secret.0).expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> TurnSecret {
        TurnSecret::from_file_content(s.as_bytes()).unwrap()
    }

    fn settings(urls: &[&str], ttl_secs: u64) -> IceSettings {
        let urls: Vec<String> = urls.iter().map(|u| (*u).to_owned()).collect();
        IceSettings::new(&urls, Some(secret("north")), Duration::from_secs(ttl_secs)).unwrap()
    }

    #[test]
    fn the_credential_is_the_turn_rest_hmac() {
        // Computed independently: printf %s '1700000000:coach-1' | openssl dgst -sha1 -hmac north -binary | base64
        assert_eq!(
            turn_credential(&secret("north"), "1700000000:coach-1"),
            "XaqAFOIa2siD1OPaIlCxK11BfPs="
        );
        // RFC 2202's first HMAC-SHA1 vector (key 0x0b × 20, "Hi There"), in base64.
        assert_eq!(
            turn_credential(&TurnSecret(vec![0x0b; 20]), "Hi There"),
            "thcxhlUFcmTii8C2+zeMjvFGvgA="
        );
    }

    #[test]
    fn the_expiry_is_the_ttl_or_the_tokens_whichever_comes_first() {
        let s = settings(&["stun:stun.example.org", "turn:turn.example.org"], 3600);
        let list = s.list_for("coach-1", Some(1_000_000 + 7200), 1_000_000);
        assert_eq!(list.ttl, 3600);
        assert_eq!(list.ice_servers[0].urls, ["stun:stun.example.org"]);
        assert_eq!(list.ice_servers[0].username, None);
        assert_eq!(list.ice_servers[1].username.as_deref(), Some("1003600:coach-1"));
        let list = s.list_for("coach-1", Some(1_000_000 + 60), 1_000_000);
        assert_eq!(list.ttl, 60);
        assert_eq!(list.ice_servers[1].username.as_deref(), Some("1000060:coach-1"));
        assert_eq!(
            list.ice_servers[1].credential.as_deref(),
            Some(turn_credential(&secret("north"), "1000060:coach-1").as_str())
        );
        let list = s.list_for(ANONYMOUS_USER, None, 1_000_000);
        assert_eq!(list.ttl, 3600);
    }

    #[test]
    fn nothing_configured_is_an_empty_list() {
        let s = IceSettings::new(&[String::new()], None, Duration::from_secs(60)).unwrap();
        assert!(!s.is_configured());
        assert_eq!(s.list_for("u", Some(10), 1), IceServerList::default());
        let stun = settings(&["stun:stun.example.org"], 60);
        assert!(!stun.issues_credentials());
        assert_eq!(stun.list_for("u", None, 1).ice_servers.len(), 1);
    }

    #[test]
    fn turn_urls_need_a_secret_and_every_url_is_checked() {
        let urls = vec!["stun:s.example.org".to_owned(), "turns:t.example.org:443".to_owned()];
        let err = IceSettings::new(&urls, None, Duration::from_secs(60)).unwrap_err();
        assert!(err.to_string().contains("--turn-secret-file"), "{err}");
        assert!(err.to_string().contains("turns:t.example.org:443"), "{err}");
        let err = IceSettings::new(&["http://x".to_owned()], None, Duration::from_secs(60)).unwrap_err();
        assert!(err.to_string().starts_with("--ice-servers"), "{err}");
    }

    #[test]
    fn secrets_are_trimmed_and_never_printed() {
        assert!(TurnSecret::from_file_content(b" \n\t").is_none());
        assert_eq!(secret("  north\r\n").0, b"north");
        assert_eq!(format!("{:?}", secret("north")), "TurnSecret(..)");
    }

    #[test]
    fn long_user_ids_are_cut_to_a_username_relays_accept() {
        let long = "é".repeat(400);
        let username = turn_username(1_700_000_000, &long);
        assert!(username.len() <= MAX_TURN_USERNAME_BYTES);
        assert!(username.starts_with("1700000000:éé"));
        assert_eq!(turn_username(1, "coach-1"), "1:coach-1");
    }
}
