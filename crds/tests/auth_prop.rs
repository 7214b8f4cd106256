//! Property tests of room-token verification: whatever a client presents, verification answers
//! with an error or with exactly the claims that were signed, and it accepts a token only when
//! every rule holds (key, audience, room, expiry, the longest life, issue time).

use orb_api::auth::{AuthError, CLOCK_LEEWAY_SECONDS, ROOM_TOKEN_AUDIENCE, Role, RoomClaims, SigningKey, unix_now};
use proptest::prelude::*;

const MAX_TTL: u64 = 86_400;

fn key(b: u8) -> SigningKey {
    SigningKey::new(vec![b; 32]).unwrap()
}

/// A time relative to now, kept well clear of every boundary, so that the clock moving during
/// the test cannot change the expected answer.
#[derive(Clone, Copy, Debug)]
enum Exp {
    Past,
    Valid,
    TooFar,
}

#[derive(Clone, Copy, Debug)]
enum Iat {
    Past,
    Future,
}

fn exp_at(kind: Exp, offset: u64, now: u64) -> u64 {
    match kind {
        Exp::Past => now - 60 - offset % 3_600,
        Exp::Valid => now + 60 + offset % (MAX_TTL - 120),
        Exp::TooFar => now + MAX_TTL + CLOCK_LEEWAY_SECONDS + 120 + offset % 1_000_000,
    }
}

fn iat_at(kind: Iat, offset: u64, now: u64) -> u64 {
    match kind {
        Iat::Past => now - offset % 3_600,
        Iat::Future => now + CLOCK_LEEWAY_SECONDS + 120 + offset % 3_600,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary text, including JWT-shaped text, never opens a room and never panics.
    #[test]
    fn arbitrary_tokens_are_refused(token in ".{0,300}", dots in "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,43}") {
        prop_assert!(key(1).verify(&token, "room").is_err());
        prop_assert!(key(1).verify(&dots, "room").is_err());
    }

    /// A token is accepted exactly when it is signed with the key, meant for signaling, for this
    /// room, not expired, not longer-lived than the limit and not issued in the future.
    #[test]
    fn acceptance_follows_the_rules(
        same_key in any::<bool>(),
        right_audience in any::<bool>(),
        same_room in any::<bool>(),
        exp in prop_oneof![Just(Exp::Past), Just(Exp::Valid), Just(Exp::TooFar)],
        iat in prop_oneof![Just(Iat::Past), Just(Iat::Future)],
        exp_offset in any::<u64>(),
        iat_offset in any::<u64>(),
        role in prop_oneof![Just(Role::Coach), Just(Role::Client), Just(Role::Ai)],
    ) {
        let now = unix_now();
        let claims = RoomClaims {
            room: "room-a".into(),
            sub: "user-1".into(),
            role,
            exp: exp_at(exp, exp_offset, now),
            iat: iat_at(iat, iat_offset, now),
            session: None,
            aud: if right_audience { ROOM_TOKEN_AUDIENCE.into() } else { "another-service".into() },
            orb: None,
        };
        let token = key(if same_key { 1 } else { 2 }).mint(&claims);
        let room = if same_room { "room-a" } else { "room-b" };
        let result = key(1).verify_at(&token, room, now, MAX_TTL);
        let ok = same_key && right_audience && same_room && matches!(exp, Exp::Valid) && matches!(iat, Iat::Past);
        match result {
            Ok(got) => {
                prop_assert!(ok, "accepted a token that breaks a rule: {claims:?}");
                prop_assert_eq!(got, claims);
            }
            Err(e) => {
                prop_assert!(!ok, "refused a good token: {e}");
                // The reason names a rule the token breaks.
                let named = match e {
                    AuthError::BadSignature => !same_key,
                    AuthError::WrongAudience => !right_audience,
                    AuthError::WrongRoom => !same_room,
                    AuthError::Expired => matches!(exp, Exp::Past),
                    AuthError::TooLongLived => matches!(exp, Exp::TooFar) || matches!(iat, Iat::Future),
                    _ => false,
                };
                prop_assert!(named, "{e} for {claims:?} (same key {same_key}, room {room})");
            }
        }
    }

    /// Changing any one character of a good token gives either a refusal or the same claims
    /// (base64's last character carries a few unused bits); never other claims.
    #[test]
    fn tampering_never_yields_other_claims(at in any::<prop::sample::Index>(), with in "[A-Za-z0-9_.-]") {
        let now = unix_now();
        let claims = RoomClaims {
            room: "room-a".into(),
            sub: "user-1".into(),
            role: Role::Client,
            exp: now + 600,
            iat: now,
            session: Some("booking-7".into()),
            aud: ROOM_TOKEN_AUDIENCE.into(),
            orb: None,
        };
        let token = key(1).mint(&claims);
        let i = at.index(token.len());
        let mut tampered = token.clone().into_bytes();
        tampered[i] = with.as_bytes()[0];
        let tampered = String::from_utf8(tampered).unwrap();
        if let Ok(got) = key(1).verify(&tampered, "room-a") {
            prop_assert_eq!(got, claims);
        }
    }
}
