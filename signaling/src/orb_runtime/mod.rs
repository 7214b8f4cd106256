//! Where orbs come from. The room registry asks a runtime for an orb when the first human joins
//! and reports presence on join, leave and activity; the runtime answers asynchronously with
//! status events (`queued`, `starting`, `ready`, `unavailable`, `ended`) that the server forwards to
//! the room. Every method is non-blocking, so an orb that cannot be had never delays the humans'
//! call: they get `ai_status` `unavailable` and carry on (seed 001: "continue without AI").

pub mod check_cache;
pub mod kubernetes;
pub mod local;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::metrics::{Metrics, OrbRequestResult};
use crate::protocol::AiStatus;

/// A room wants an orb.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrbRequest {
    pub room_id: String,
    /// The coach's user id, when a coach has joined (from the token with auth on).
    pub coach_id: Option<String>,
    pub client_id: Option<String>,
    /// The coaching session (the first human's token `session` claim); the orb's lifetime is a
    /// budget of it.
    pub session_id: Option<String>,
}

/// Who is in a room and when something last happened there. Activity is a human joining or
/// leaving, or voice the orb heard or produced (reported by the orb); relayed SDP/ICE is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presence {
    /// Humans in the room; 0 means the room emptied.
    pub humans: u32,
    pub last_activity: SystemTime,
}

pub trait OrbRuntime: Send + Sync + 'static {
    /// Makes sure an orb exists for the room. Must not block; progress is reported through
    /// [`OrbEvents`].
    fn request_orb(&self, request: OrbRequest);

    /// The room's presence changed or it saw activity. Must not block; runtimes that persist
    /// presence debounce their writes.
    fn report_presence(&self, room_id: &str, presence: Presence);

    /// Whether `orb_uid` (from an orb's room token) is the room's live orb. Asked before an orb's
    /// socket is upgraded, so a token of an earlier orb of the room can neither replace nor
    /// impersonate the live one. Runtimes without orbs of their own cannot tell.
    fn check_orb(&self, _room_id: &str, _orb_uid: &str) -> BoxFuture<'static, OrbCheck> {
        Box::pin(async { OrbCheck::Unknown })
    }

    /// Flushes pending work before the process exits.
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// What a runtime knows of an orb token's AiOrb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrbCheck {
    /// The room's live orb: let it in.
    Live,
    /// Not the room's live orb (an earlier one, or none): refuse it (403, final for the orb).
    Stale,
    /// The runtime cannot look now (its API is unreachable): refuse for now (503, retried).
    Unavailable,
    /// The runtime keeps no orbs (`none`, tests): the token's other rules decide.
    Unknown,
}

/// What a runtime saw of the rooms' orbs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrbEvent {
    /// A status change of a room's orb.
    Status { room_id: String, status: AiStatus },
    /// The room's orb is gone for good (its AiOrb, `orb_uid` when the runtime has them,
    /// finished): why. Not a status change (that one comes as its own event).
    Gone {
        room_id: String,
        orb_uid: Option<String>,
        why: String,
    },
    /// The runtime listed every orb there is (at start, and again after its watch lost track):
    /// their uids. A checkpoint owned by any other orb was left by one that ended unseen.
    Listed { orb_uids: HashSet<String> },
}

/// The runtimes' way back to the rooms (and to the orb request metrics).
#[derive(Clone)]
pub struct OrbEvents {
    tx: mpsc::UnboundedSender<OrbEvent>,
    metrics: Arc<Metrics>,
}

impl OrbEvents {
    pub fn new(metrics: Arc<Metrics>) -> (Self, mpsc::UnboundedReceiver<OrbEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx, metrics }, rx)
    }

    pub fn status(&self, room_id: &str, status: AiStatus) {
        // The receiver is gone only when the server is shutting down.
        let _ = self.tx.send(OrbEvent::Status {
            room_id: room_id.to_owned(),
            status,
        });
    }

    /// The room's orb (of AiOrb `orb_uid`, when the runtime has them) finished for good (`why`):
    /// a checkpoint it left becomes the session's summary.
    pub fn gone(&self, room_id: &str, orb_uid: Option<String>, why: String) {
        let _ = self.tx.send(OrbEvent::Gone {
            room_id: room_id.to_owned(),
            orb_uid,
            why,
        });
    }

    /// Every orb there is, by uid (see [`OrbEvent::Listed`]).
    pub fn listed(&self, orb_uids: HashSet<String>) {
        let _ = self.tx.send(OrbEvent::Listed { orb_uids });
    }

    pub fn request_result(&self, result: OrbRequestResult) {
        self.metrics.orb_request(result);
    }
}

/// `--orb-runtime=none`: calls go on without an AI.
pub struct NoOrbRuntime {
    events: OrbEvents,
}

impl NoOrbRuntime {
    pub fn new(events: OrbEvents) -> Self {
        Self { events }
    }
}

impl OrbRuntime for NoOrbRuntime {
    fn request_orb(&self, request: OrbRequest) {
        self.events.request_result(OrbRequestResult::Failed);
        self.events.status(&request.room_id, AiStatus::Unavailable);
    }

    fn report_presence(&self, _room_id: &str, _presence: Presence) {}
}

#[doc(hidden)]
pub mod testing {
    //! A runtime that records what it was asked, for tests of the rooms and the server.

    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    pub struct RecordingRuntime {
        requests: Mutex<Vec<OrbRequest>>,
        presence: Mutex<HashMap<String, Presence>>,
    }

    impl RecordingRuntime {
        pub fn requests(&self) -> Vec<OrbRequest> {
            self.requests.lock().unwrap().clone()
        }

        pub fn last_presence(&self, room_id: &str) -> Option<Presence> {
            self.presence.lock().unwrap().get(room_id).copied()
        }
    }

    impl OrbRuntime for RecordingRuntime {
        fn request_orb(&self, request: OrbRequest) {
            self.requests.lock().unwrap().push(request);
        }

        fn report_presence(&self, room_id: &str, presence: Presence) {
            self.presence.lock().unwrap().insert(room_id.to_owned(), presence);
        }
    }
}
