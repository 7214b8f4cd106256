//! Room ids and the Kubernetes names derived from them. Signaling and the operator both name
//! things from a room id, so the rules live here once.

use thiserror::Error;

/// Longest room id accepted anywhere (the CRD schema says the same).
pub const MAX_ROOM_ID_LEN: usize = 128;
/// Longest AiOrb name: leaves room for `orb-` + name + `-NN` inside a 63-character label/hostname.
pub const MAX_ORB_NAME_LEN: usize = 52;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RoomIdError {
    #[error("room id is empty")]
    Empty,
    #[error("room id is longer than {MAX_ROOM_ID_LEN} characters")]
    TooLong,
    #[error("room id must start with a letter or digit and contain only letters, digits, '.', '_', '~' and '-'")]
    InvalidCharacter,
}

/// Checks a room id against the rule the CRD schema enforces (`^[A-Za-z0-9][A-Za-z0-9._~-]*$`,
/// at most 128 characters): URL-safe without escaping, so it can travel in paths and args.
pub fn validate_room_id(room_id: &str) -> Result<(), RoomIdError> {
    let mut chars = room_id.chars();
    let first = chars.next().ok_or(RoomIdError::Empty)?;
    if room_id.len() > MAX_ROOM_ID_LEN {
        return Err(RoomIdError::TooLong);
    }
    if !first.is_ascii_alphanumeric() || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-'))
    {
        return Err(RoomIdError::InvalidCharacter);
    }
    Ok(())
}

/// The AiOrb name for a room: the room id lowercased with anything outside DNS-1123 replaced by
/// `-`. When that changed the id (case, characters, length), a hash of the raw id is appended so
/// that `Room-A` and `room-a` never share an orb.
pub fn orb_name_for_room(room_id: &str) -> String {
    let mut name: String = room_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let changed = name != room_id || name.len() > MAX_ORB_NAME_LEN || name.starts_with('-') || name.ends_with('-');
    if !changed && !name.is_empty() {
        return name;
    }
    let hash = format!("{:010x}", fnv1a64(room_id.as_bytes()) & 0xff_ffff_ffff);
    name.truncate(MAX_ORB_NAME_LEN - hash.len() - 1);
    let stem = name.trim_matches('-');
    if stem.is_empty() {
        format!("room-{hash}")
    } else {
        format!("{stem}-{hash}")
    }
}

/// The pod for a given attempt of an orb. Each replacement gets a new name so that it never
/// collides with its predecessor while that one is still terminating.
pub fn pod_name(orb_name: &str, attempt: i32) -> String {
    format!("orb-{orb_name}-{attempt}")
}

/// The per-orb Secret holding the orb's signaling token.
pub fn token_secret_name(orb_name: &str) -> String {
    format!("orb-{orb_name}-token")
}

/// FNV-1a: stable across releases and platforms, which `std`'s hasher is not.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn clean_room_ids_are_used_as_they_are() {
        assert_eq!(orb_name_for_room("room123"), "room123");
        assert_eq!(orb_name_for_room("test-room-123"), "test-room-123");
    }

    #[test]
    fn sanitised_ids_get_a_hash_and_never_collide_by_case() {
        let upper = orb_name_for_room("Room-A");
        let lower = orb_name_for_room("room-a");
        assert_eq!(lower, "room-a");
        assert!(upper.starts_with("room-a-"), "{upper}");
        assert_ne!(upper, lower);
        assert_eq!(orb_name_for_room("Room-A"), upper, "deterministic");
    }

    #[test]
    fn room_id_rules() {
        assert_eq!(validate_room_id(""), Err(RoomIdError::Empty));
        assert_eq!(validate_room_id("-x"), Err(RoomIdError::InvalidCharacter));
        assert_eq!(validate_room_id("a b"), Err(RoomIdError::InvalidCharacter));
        assert_eq!(validate_room_id("a/b"), Err(RoomIdError::InvalidCharacter));
        assert_eq!(validate_room_id(&"a".repeat(129)), Err(RoomIdError::TooLong));
        assert_eq!(validate_room_id("Room_1.x~y-z"), Ok(()));
    }

    proptest! {
        #[test]
        fn every_orb_name_is_a_dns_label_that_fits_pod_names(room in "\\PC{0,200}") {
            let name = orb_name_for_room(&room);
            prop_assert!(!name.is_empty() && name.len() <= MAX_ORB_NAME_LEN, "{name}");
            prop_assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            prop_assert!(!name.starts_with('-') && !name.ends_with('-'));
            prop_assert!(pod_name(&name, 99).len() <= 63);
        }
    }
}
