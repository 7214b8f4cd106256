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
        }))
    }
}

/// The token of an upgrade request: `?token=` (browsers cannot set headers on a WebSocket) or
/// `Authorization: Bearer` (the orb). The query parameter wins when both are present.
pub fn request_token(query_token: Option<String>, headers: &HeaderMap) -> Option<String> {
    query_token.filter(|t| !t.is_empty()).or_else(|| {
        headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(|t| t.trim().to_owned())
    })
}

/// Every value [`failure_label`] returns.
pub const FAILURE_LABELS: [&str; 7] = [
    "missing",
    "expired",
    "wrong_room",
    "bad_signature",
    "malformed",
    "wrong_audience",
    "too_long_lived",
];

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

    #[test]
    fn token_from_query_or_bearer_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_token(None, &headers), None);
        headers.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(request_token(None, &headers).as_deref(), Some("abc"));
        assert_eq!(request_token(Some("q".into()), &headers).as_deref(), Some("q"));
        assert_eq!(request_token(Some(String::new()), &headers).as_deref(), Some("abc"));
    }
}
