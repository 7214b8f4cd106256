//! Rooms across replicas, on Redis (`--redis-url`).
//!
//! Each replica keeps its own sockets; Redis holds who is in which room and carries messages
//! between replicas:
//!
//! * **Membership** is a hash per room (`orb:room:<id>`, a field per member naming its replica
//!   and connection, plus a sequence number and the room's orb request). Joins and leaves are
//!   Lua scripts, so the checks a single process makes under its lock (room full, stale orb,
//!   replacement of the same user, "the first human asks for an orb": [`crate::room::admit`])
//!   are made once for the whole room, and each change is published, numbered, to every replica
//!   with members there.
//! * **Messages** go to a replica's inbox channel (`orb:inbox:<replica>`): a relay to a member on
//!   another replica is one `PUBLISH`, sent in order from one connection, so messages of one
//!   sender keep their order.
//! * **Liveness**: every replica refreshes `orb:replica:<id>` (a short TTL) each second and sweeps
//!   replicas whose key expired: their members leave for everyone (the [`reap`](scripts) script).
//! * **Outages**: with Redis away, joins are refused with `unavailable` and `/readyz` says so,
//!   while calls whose members share a replica go on. When Redis is back (or comes back empty:
//!   the `orb:epoch` key tells), each replica restores its members from its live sockets and
//!   re-reads its rooms; nobody rejoins.
//!
//! Every replica holds a copy of the rooms it has members in ([`crate::room`]), updated from
//! the numbered events; a gap in the numbers makes it re-read the room.

mod envelope;
mod link;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::protocol::{AiStatus, ParticipantType, UserRole};
use crate::room::Identity;

pub use link::{Cluster, ClusterError, JoinMode, JoinOutcome, RedisSettings, Snapshot};

/// How long a replica's liveness key lives without a refresh: a replica that died is swept
/// within this plus one sweep interval.
pub const LIVENESS_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// How often liveness is refreshed and dead replicas are swept.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A member as the room hash and the events carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRecord {
    pub user_id: String,
    pub role: UserRole,
    pub participant_type: ParticipantType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<u64>,
    /// The replica holding the socket, and the socket's id there.
    pub replica: String,
    pub conn: u64,
    /// The number of the join that added it (set by the join script): the members' order.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub join_seq: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl MemberRecord {
    pub fn new(identity: &Identity, replica: &str, conn: u64) -> Self {
        Self {
            user_id: identity.user_id.clone(),
            role: identity.role,
            participant_type: identity.participant_type,
            user_name: identity.user_name.clone(),
            session_id: identity.session_id.clone(),
            issued_at: identity.issued_at,
            replica: replica.to_owned(),
            conn,
            join_seq: 0,
        }
    }

    pub fn identity(&self) -> Identity {
        Identity {
            user_id: self.user_id.clone(),
            role: self.role,
            participant_type: self.participant_type,
            user_name: self.user_name.clone(),
            session_id: self.session_id.clone(),
            issued_at: self.issued_at,
            orb_uid: None,
            expires_at: None,
        }
    }
}

/// Who on the receiving replica gets a delivered frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Every member there (the sender is on another replica).
    All,
    /// The member with this user id.
    User(String),
    /// Everyone but the member with this user id (the sender).
    AllBut(String),
    Humans,
    Coaches,
}

/// What one replica tells another through its inbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Event {
    /// Published by the join script.
    Joined {
        room: String,
        seq: u64,
        member: MemberRecord,
        #[serde(default)]
        replaced: Option<MemberRecord>,
        /// The join asked for an orb: the last attempt's status is over for every copy.
        #[serde(default)]
        request: bool,
    },
    /// Published by the leave and reap scripts.
    Left {
        room: String,
        seq: u64,
        member: MemberRecord,
    },
    /// A frame for members on the receiving replica; `ai_status` also updates the room's copy.
    Deliver {
        room: String,
        to: Target,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ai_status: Option<AiStatus>,
    },
    /// Voice activity the orb reported, in Unix milliseconds.
    Activity { room: String, at_ms: u64 },
}

impl Event {
    pub fn room(&self) -> &str {
        match self {
            Event::Joined { room, .. }
            | Event::Left { room, .. }
            | Event::Deliver { room, .. }
            | Event::Activity { room, .. } => room,
        }
    }
}

/// A replica's id: the host name (the pod name in Kubernetes) and the start time, so a restarted
/// process is a new replica and the old one's members are swept.
pub fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "signaling".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{host}-{:x}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

pub type SharedCluster = Arc<Cluster>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The Lua scripts write these by hand: the shapes must stay what serde reads.
    #[test]
    fn script_written_events_decode() {
        let member = json!({"userId": "c", "role": "coach", "participantType": "human", "replica": "a", "conn": 3});
        let joined = json!({"k": "joined", "room": "r", "seq": 2, "member": member, "replaced": member});
        let Event::Joined {
            seq, replaced, request, ..
        } = serde_json::from_value(joined).unwrap()
        else {
            panic!("not a join")
        };
        assert_eq!((seq, replaced.unwrap().conn, request), (2, 3, false));
        let asking = json!({"k": "joined", "room": "r", "seq": 2, "member": member, "request": true});
        assert!(matches!(
            serde_json::from_value(asking).unwrap(),
            Event::Joined { request: true, .. }
        ));
        let left = json!({"k": "left", "room": "r", "seq": 3, "member": member});
        assert!(matches!(
            serde_json::from_value(left).unwrap(),
            Event::Left { seq: 3, .. }
        ));
    }
}

#[doc(hidden)]
pub mod testing {
    //! A real `redis-server` on a loopback port for the tests, stopped when dropped.

    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub struct RedisServer {
        pub port: u16,
        child: Option<Child>,
    }

    impl RedisServer {
        /// Starts `redis-server` (the Debian package) without persistence on a free port.
        pub fn start() -> Self {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut server = Self { port, child: None };
            server.run();
            server
        }

        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        /// The server's process id while it runs (benchmarks read its CPU time).
        pub fn pid(&self) -> Option<u32> {
            self.child.as_ref().map(Child::id)
        }

        fn run(&mut self) {
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .args(["--appendonly", "no", "--protected-mode", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (the Debian package redis-server; scripts/install-deps installs it)");
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
        }

        /// Kills the server (its data is gone: no persistence).
        pub fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        /// A fresh, empty server on the same port.
        pub fn restart(&mut self) {
            self.stop();
            self.run();
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.stop();
        }
    }
}
