//! Binding a warm orb to a room: what the operator (or the local runtime) tells a running, idle
//! orb, and the credential that proves the sender may. A warm orb is started without a room; it
//! prepares its brain and waits on `POST /assign` for one [`Assignment`]. Only its starter knows
//! the credential: a per-orb value derived from the signing key (the operator puts it in a Secret
//! the warm pod mounts), so nobody else who can reach the pod can point it at a room.

use serde::{Deserialize, Serialize};

use crate::auth::SigningKey;

/// The orb's HTTP path that takes an assignment.
pub const ASSIGN_PATH: &str = "/assign";
/// The environment variable holding a warm orb's assignment credential.
pub const ASSIGN_TOKEN_ENV: &str = "ORB_ASSIGN_TOKEN";

/// Everything a cold orb gets on its command line for one room, sent to a warm orb instead.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Assignment {
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coach: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The session's purpose (`spec.purpose`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// What is left of the orb's lifetime.
    pub max_lifetime_seconds: u64,
    pub idle_timeout_seconds: u64,
    /// Base URL of signaling (`ws://` or `wss://`).
    pub signaling_url: String,
    /// The orb's room token; `None` when signaling checks no tokens (dev mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assignment")
            .field("room", &self.room)
            .field("session", &self.session)
            .field("max_lifetime_seconds", &self.max_lifetime_seconds)
            .field("idle_timeout_seconds", &self.idle_timeout_seconds)
            .field("signaling_url", &self.signaling_url)
            .field("token", &self.token.as_ref().map(|_| ".."))
            .finish_non_exhaustive()
    }
}

impl Assignment {
    /// The orb's command-line flags for this assignment: a cold orb starts with exactly these.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--room={}", self.room),
            format!("--signaling-url={}", self.signaling_url),
        ];
        for (flag, value) in [
            ("session", &self.session),
            ("coach", &self.coach),
            ("client", &self.client),
            ("purpose", &self.purpose),
        ] {
            if let Some(v) = value {
                args.push(format!("--{flag}={v}"));
            }
        }
        args.push(format!("--max-lifetime={}s", self.max_lifetime_seconds.max(1)));
        args.push(format!("--idle-timeout={}s", self.idle_timeout_seconds.max(1)));
        args
    }
}

/// How a warm orb answered an assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AssignOutcome {
    /// It joined the room before answering.
    Joined,
    /// It took the assignment and is still joining (signaling slow or unreachable).
    Accepted,
}

/// The credential of the warm orb `orb_name` (its pod name): an HMAC of the name under the signing
/// key, so the operator needs to store nothing to assign it later, even after a restart.
pub fn assign_credential(key: &SigningKey, orb_name: &str) -> String {
    key.derive(&format!("warm-orb-assignment:{orb_name}"))
}

/// The seal of a warm orb pod the operator created: an HMAC of the pod's uid (assigned by the API
/// server, never reused) under the signing key, written into the pod's annotation
/// [`WARM_SEAL_ANNOTATION`] right after its creation. A pod anyone else creates or labels as warm
/// cannot carry a valid seal, so the pool neither counts, stops nor binds it.
pub fn warm_seal(key: &SigningKey, pod_uid: &str) -> String {
    key.derive(&format!("warm-orb-pod:{pod_uid}"))
}

/// The annotation holding a warm pod's [`warm_seal`].
pub const WARM_SEAL_ANNOTATION: &str = "hybridcoach.io/warm-seal";

/// Compares a presented credential with the expected one in time independent of where they
/// differ.
pub fn credential_matches(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SigningKey {
        SigningKey::new(vec![byte; 32]).unwrap()
    }

    #[test]
    fn the_credential_is_per_orb_and_per_key_and_stable() {
        let a = assign_credential(&key(1), "orb-warm-a");
        assert_eq!(
            a,
            assign_credential(&key(1), "orb-warm-a"),
            "derivable again after a restart"
        );
        assert_ne!(a, assign_credential(&key(1), "orb-warm-b"));
        assert_ne!(a, assign_credential(&key(2), "orb-warm-a"));
        assert!(credential_matches(&a, &a));
        assert!(!credential_matches(&a, &a[1..]));
        assert!(!credential_matches("", &a));
    }

    #[test]
    fn an_assignment_gives_the_cold_orbs_flags_and_hides_its_token() {
        let a = Assignment {
            room: "r1".into(),
            session: Some("s".into()),
            coach: None,
            client: Some("c".into()),
            purpose: Some("Goals review: \"Q3\" --room=x".into()),
            max_lifetime_seconds: 0,
            idle_timeout_seconds: 300,
            signaling_url: "ws://sig:8080".into(),
            token: Some("secret-token".into()),
        };
        assert_eq!(
            a.args(),
            [
                "--room=r1",
                "--signaling-url=ws://sig:8080",
                "--session=s",
                "--client=c",
                // One argument however the text reads: no shell, no splitting.
                "--purpose=Goals review: \"Q3\" --room=x",
                "--max-lifetime=1s",
                "--idle-timeout=300s"
            ]
        );
        assert!(!format!("{a:?}").contains("secret-token"));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Assignment>(&json).unwrap(), a);
        assert!(serde_json::from_str::<Assignment>(r#"{"room":"r","bogus":1}"#).is_err());
    }
}
