//! Who may join which room as whom. With tokens on, the token alone decides the user id, the role
//! and whether the participant is the AI; the join message's claims are ignored.

use axum::http::HeaderMap;
use orb_api::auth::{AuthError, Role, SigningKey, unix_now};

use crate::protocol::{ParticipantType, UserRole};
use crate::room::Identity;

#[derive(Clone, Debug)]
pub enum Authenticator {
    /// Room tokens signed with the shared key, living at most `max_ttl`.
    Jwt {
        key: SigningKey,
        max_ttl: std::time::Duration,
    },
    /// No auth: the join message is trusted (seed 001 behaviour, local development only).
    None,
}

impl Authenticator {
    /// Checks the token presented for `room_id`. `Ok(None)` means auth is off and the identity
    /// comes from the join message.
    pub fn authenticate(&self, room_id: &str, token: Option<&str>) -> Result<Option<Identity>, AuthError> {
        let Authenticator::Jwt { key, max_ttl } = self else {
            return Ok(None);
        };
        let claims = key.verify_at(token.unwrap_or_default(), room_id, unix_now(), max_ttl.as_secs())?;
        let role = match claims.role {
            Role::Coach => UserRole::Coach,
            Role::Client => UserRole::Client,
            Role::Ai => UserRole::Ai,
        };
        Ok(Some(Identity {
            user_id: claims.sub,
            role,
            participant_type: if role == UserRole::Ai {
                ParticipantType::Ai
            } else {
                ParticipantType::Human
            },
            user_name: None,
            session_id: claims.session,
            issued_at: Some(claims.iat),
            orb_uid: claims.orb,
            expires_at: Some(claims.exp),
        }))
    }
}

/// The WebSocket subprotocol of this server. A client that sends its token as a subprotocol
/// offers it too, and the handshake answers with it (never with the token).
pub const SUBPROTOCOL: &str = "orb-signaling";
/// The prefix of the subprotocol entry carrying the token: `bearer.<token>`. A room token (a
/// JWT: base64url parts joined by dots) is a valid subprotocol name as it is.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "bearer.";

/// Why a request's token could not be read (HTTP 400): not a token problem, a request problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("different room tokens were presented (query, Authorization header, subprotocol); send one")]
    Conflict,
    #[error("the {0} header is not readable: {1}")]
    BadHeader(&'static str, &'static str),
    #[error("a token subprotocol (bearer.<token>) needs the orb-signaling subprotocol offered with it")]
    NoSubprotocol,
}

/// The token of a request, from any of three places:
///
/// * `Sec-WebSocket-Protocol: orb-signaling, bearer.<token>` (browsers and the orb: the token stays
///   out of URLs, and so out of proxy and access logs);
/// * `Authorization: Bearer <token>` (any HTTP client; the scheme is case-insensitive, other
///   schemes are ignored);
/// * `?token=` in `query` (the original transport, kept for compatibility).
///
/// Empty values count as absent. Every token presented must be the same string: the same token in
/// several places is fine, two different ones are refused ([`TransportError::Conflict`]) rather
/// than one of them silently preferred. `Ok(None)`: no token at all.
pub fn request_token(query: Option<&str>, headers: &HeaderMap) -> Result<Option<String>, TransportError> {
    let mut found: Option<String> = None;
    let mut take = |token: &str| -> Result<(), TransportError> {
        if token.is_empty() {
            return Ok(());
        }
        match &found {
            Some(t) if t != token => Err(TransportError::Conflict),
            Some(_) => Ok(()),
            None => {
                found = Some(token.to_owned());
                Ok(())
            }
        }
    };
    if let Some(query) = query {
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if name == "token" {
                take(&value)?;
            }
        }
    }
    for value in headers.get_all(http::header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| TransportError::BadHeader("Authorization", "not visible ASCII"))?
            .trim();
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            let credentials = credentials.trim();
            if credentials.is_empty() {
                return Err(TransportError::BadHeader("Authorization", "Bearer without a token"));
            }
            take(credentials)?;
        }
    }
    let mut token_protocol = false;
    let mut offered = false;
    for value in headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
        let value = value
            .to_str()
            .map_err(|_| TransportError::BadHeader("Sec-WebSocket-Protocol", "not visible ASCII"))?;
        for protocol in value.split(',').map(str::trim) {
            if protocol == SUBPROTOCOL {
                offered = true;
            } else if let Some(token) = protocol.strip_prefix(TOKEN_SUBPROTOCOL_PREFIX) {
                if token.is_empty() {
                    return Err(TransportError::BadHeader(
                        "Sec-WebSocket-Protocol",
                        "bearer. without a token",
                    ));
                }
                token_protocol = true;
                take(token)?;
            }
        }
    }
    // The handshake must answer with a protocol the client offered, and never with the token.
    if token_protocol && !offered {
        return Err(TransportError::NoSubprotocol);
    }
    Ok(found)
}

/// The HTTP refusal of a token: 403 for a valid token that does not open this room, 401 for
/// everything else (no token, or one that proves nothing).
pub fn refusal_status(e: &AuthError) -> http::StatusCode {
    match e {
        AuthError::WrongRoom => http::StatusCode::FORBIDDEN,
        _ => http::StatusCode::UNAUTHORIZED,
    }
}

/// Every value of `auth_failures_total{reason}`: what [`failure_label`] returns and
/// [`BAD_REQUEST_LABEL`] and [`STALE_ORB_LABEL`].
pub const FAILURE_LABELS: [&str; 9] = [
    "missing",
    "bad_request",
    "stale_orb",
    "expired",
    "wrong_room",
    "bad_signature",
    "malformed",
    "wrong_audience",
    "too_long_lived",
];

/// Metric label of a request whose token could not be read ([`TransportError`]).
pub const BAD_REQUEST_LABEL: &str = "bad_request";

/// Metric label of an orb token whose AiOrb is not the room's live orb (or cannot be checked).
pub const STALE_ORB_LABEL: &str = "stale_orb";

/// Metric label of an auth failure.
pub fn failure_label(e: &AuthError) -> &'static str {
    match e {
        AuthError::Missing => "missing",
        AuthError::Expired => "expired",
        AuthError::WrongRoom => "wrong_room",
        AuthError::BadSignature => "bad_signature",
        AuthError::Malformed(_) => "malformed",
        AuthError::WrongAudience => "wrong_audience",
        AuthError::TooLongLived => "too_long_lived",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orb_api::auth::RoomClaims;

    #[test]
    fn the_token_decides_the_identity() {
        let key = SigningKey::new(vec![3u8; 32]).unwrap();
        let token = key.mint(&RoomClaims {
            room: "r".into(),
            sub: "orb-r".into(),
            role: Role::Ai,
            exp: unix_now() + 60,
            session: None,
            iat: orb_api::auth::unix_now(),
            aud: orb_api::auth::ROOM_TOKEN_AUDIENCE.into(),
            orb: None,
        });
        let jwt = |key: SigningKey| Authenticator::Jwt {
            key,
            max_ttl: std::time::Duration::from_secs(orb_api::auth::MAX_TOKEN_TTL_SECONDS),
        };
        let id = jwt(key.clone()).authenticate("r", Some(&token)).unwrap().unwrap();
        assert_eq!(
            (id.user_id.as_str(), id.participant_type),
            ("orb-r", ParticipantType::Ai)
        );
        assert_eq!(jwt(key).authenticate("r", None).unwrap_err(), AuthError::Missing);
        assert_eq!(Authenticator::None.authenticate("r", None), Ok(None));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn token_from_query_bearer_header_or_subprotocol() {
        let none = HeaderMap::new();
        assert_eq!(request_token(None, &none), Ok(None));
        assert_eq!(request_token(Some("room=x&token="), &none), Ok(None));
        assert_eq!(
            request_token(Some("token=q%2E1"), &none).unwrap().as_deref(),
            Some("q.1")
        );
        let bearer = headers(&[("authorization", "Bearer abc")]);
        assert_eq!(request_token(None, &bearer).unwrap().as_deref(), Some("abc"));
        let lower = headers(&[("authorization", "bearer  abc ")]);
        assert_eq!(request_token(None, &lower).unwrap().as_deref(), Some("abc"));
        let basic = headers(&[("authorization", "Basic dXNlcjpwdw==")]);
        assert_eq!(request_token(None, &basic), Ok(None), "other schemes are not ours");
        let proto = headers(&[("sec-websocket-protocol", "orb-signaling, bearer.a.b.c")]);
        assert_eq!(request_token(None, &proto).unwrap().as_deref(), Some("a.b.c"));
        let split = headers(&[
            ("sec-websocket-protocol", "bearer.a.b.c"),
            ("sec-websocket-protocol", "orb-signaling"),
        ]);
        assert_eq!(request_token(None, &split).unwrap().as_deref(), Some("a.b.c"));
    }

    #[test]
    fn the_same_token_twice_is_fine_two_different_ones_are_refused() {
        let both = headers(&[
            ("authorization", "Bearer t1"),
            ("sec-websocket-protocol", "orb-signaling, bearer.t1"),
        ]);
        assert_eq!(request_token(Some("token=t1"), &both).unwrap().as_deref(), Some("t1"));
        assert_eq!(request_token(Some("token=t2"), &both), Err(TransportError::Conflict));
        assert_eq!(
            request_token(Some("token=t1&token=t2"), &HeaderMap::new()),
            Err(TransportError::Conflict)
        );
        let two = headers(&[("sec-websocket-protocol", "orb-signaling, bearer.t1, bearer.t2")]);
        assert_eq!(request_token(None, &two), Err(TransportError::Conflict));
    }

    #[test]
    fn unreadable_transports_are_refused() {
        let alone = headers(&[("sec-websocket-protocol", "bearer.t1")]);
        assert_eq!(request_token(None, &alone), Err(TransportError::NoSubprotocol));
        let empty = headers(&[("sec-websocket-protocol", "orb-signaling, bearer.")]);
        assert!(matches!(
            request_token(None, &empty),
            Err(TransportError::BadHeader(..))
        ));
        let empty = headers(&[("authorization", "Bearer ")]);
        assert!(matches!(
            request_token(None, &empty),
            Err(TransportError::BadHeader(..))
        ));
        let mut opaque = HeaderMap::new();
        opaque.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert!(matches!(
            request_token(None, &opaque),
            Err(TransportError::BadHeader(..))
        ));
    }

    #[test]
    fn a_token_for_another_room_is_forbidden_anything_else_unauthorized() {
        assert_eq!(refusal_status(&AuthError::WrongRoom), http::StatusCode::FORBIDDEN);
        for e in [AuthError::Missing, AuthError::Expired, AuthError::BadSignature] {
            assert_eq!(refusal_status(&e), http::StatusCode::UNAUTHORIZED);
        }
    }
}
