//! The `AiOrb` custom resource (`hybridcoach.io/v1alpha1`).
//!
//! The spec is written once by signaling when the first person joins a room. The status has two
//! owners, each writing with server-side apply under its own field manager: the operator owns the
//! lifecycle fields, signaling owns the presence fields (`participants`, `lastActivityTime`).

// clippy reads the repeated `type_` of separate printcolumn(...) entries as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Field manager of every write the operator makes.
pub const OPERATOR_FIELD_MANAGER: &str = "orb-operator";
/// Field manager of signaling's presence writes on the status subresource.
pub const SIGNALING_FIELD_MANAGER: &str = "orb-signaling";

/// Label the operator sets (server-side apply, field manager `orb-operator`) once an orb's status
/// is terminal. Admission lists only orbs without it ([`UNFINISHED_SELECTOR`]), so finished orbs
/// kept for their TTL cost admission nothing.
pub const FINISHED_LABEL: &str = "hybridcoach.io/finished";
/// Selects the orbs admission must see: every orb not labelled finished, including new ones
/// without the label.
pub const UNFINISHED_SELECTOR: &str = "hybridcoach.io/finished!=true";

/// Upper bound for every duration in the spec: a day. A coaching call that needs more is a bug.
pub const MAX_DURATION_SECONDS: i64 = 86_400;

/// The longest `spec.purpose`, in characters: a line or a short paragraph, never a document.
pub const MAX_PURPOSE_CHARS: usize = 1000;

/// The longest `spec.sessionId`, `spec.coachId` and `spec.clientId`, in characters (as the
/// schema counts them).
pub const MAX_ID_CHARS: usize = 256;

/// Desired state of an AI orb: which room it serves and its optional limits. Unset limits take the
/// operator's configured defaults.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "hybridcoach.io",
    version = "v1alpha1",
    kind = "AiOrb",
    plural = "aiorbs",
    singular = "aiorb",
    shortname = "orb",
    category = "hybridcoach",
    namespaced,
    status = "AiOrbStatus",
    printcolumn(name = "Room", type_ = "string", json_path = ".spec.roomId"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Participants", type_ = "integer", json_path = ".status.participants"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.nodeName"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.terminationReason",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct AiOrbSpec {
    /// The signaling room the orb joins. Immutable: an orb belongs to one room for its whole life.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._~-]*$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("roomId is immutable"))]
    pub room_id: String,
    /// The coaching session the call belongs to (the room token's `session` claim), passed to the
    /// orb for its summary. The lifetime is a budget of the session: AiOrbs of one session share it.
    /// Without one, the session is the room's current call: it ends when an orb of it finishes
    /// `RoomCleanup`, `SessionComplete` or `Deleted`, and the room's next AiOrb starts afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ID_CHARS))]
    pub session_id: Option<String>,
    /// The coach's user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ID_CHARS))]
    pub coach_id: Option<String>,
    /// The client's user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ID_CHARS))]
    pub client_id: Option<String>,
    /// What the session is for, in the app's words (e.g. "Quarterly goals review"), at most 1000
    /// characters. The orb's model gets it as context of the session, together with the coach's
    /// and the client's ids; it is shown to the model as data from the app, never as instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_PURPOSE_CHARS))]
    pub purpose: Option<String>,
    /// Test mode: deterministic test brain and a short lifetime (the operator's test-mode timeout).
    #[serde(default)]
    pub test_mode: bool,
    /// Hard limit on the session's time with an orb, counted from the first admission of any AiOrb
    /// of the session (`sessionId`, else the room's current call; see `status.sessionStartedAt`).
    /// Default: the operator's `--max-orb-lifetime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_lifetime_seconds: Option<i64>,
    /// End the orb when nobody in the room has said anything (no voice, join or leave; see
    /// `status.lastActivityTime`) for this long. Default: `--idle-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub idle_timeout_seconds: Option<i64>,
    /// End the orb when the room has been empty this long. Default: `--empty-room-grace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub empty_room_grace_seconds: Option<i64>,
    /// When the booked session starts (RFC 3339). The orb is admitted and started the operator's
    /// `--prewarm-lead` (2 min) before, so it is in the room when the first person arrives (or
    /// when someone arrives earlier); until then it waits (`Queued`, no queue position). If nobody comes, the empty-room rule ends it,
    /// counted from this time, not from its start. Unset: admitted at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<Time>,
}

/// How the orb's current pod came to be.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PodStart {
    /// A pod created for the orb.
    Cold,
    /// A warm pool pod, already running with its brain ready, bound to the orb.
    Warm,
}

/// Where an orb is in its life. `Succeeded` and `Failed` are terminal.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum OrbPhase {
    /// Waiting for capacity (`status.queuePosition` says where in line, for the first places).
    Queued,
    /// Admitted; the pod is being scheduled or started.
    Starting,
    /// The orb's pod is ready: it has joined its room.
    Ready,
    /// The pod is being stopped (`status.terminationReason` says why).
    Terminating,
    /// The orb ended as intended.
    Succeeded,
    /// The orb ended with an error (`status.message` has the detail).
    Failed,
}

impl OrbPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, OrbPhase::Succeeded | OrbPhase::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrbPhase::Queued => "Queued",
            OrbPhase::Starting => "Starting",
            OrbPhase::Ready => "Ready",
            OrbPhase::Terminating => "Terminating",
            OrbPhase::Succeeded => "Succeeded",
            OrbPhase::Failed => "Failed",
        }
    }

    pub const ALL: [OrbPhase; 6] = [
        OrbPhase::Queued,
        OrbPhase::Starting,
        OrbPhase::Ready,
        OrbPhase::Terminating,
        OrbPhase::Succeeded,
        OrbPhase::Failed,
    ];
}

/// Why an orb ended (or is ending).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TerminationReason {
    /// The orb process finished the session on its own.
    SessionComplete,
    /// Everybody left and the empty-room grace period passed.
    RoomCleanup,
    /// Nobody said anything in the room (no voice, join or leave) for the idle timeout.
    IdleTimeout,
    /// The orb reached its maximum lifetime.
    MaxLifetime,
    /// The orb's pod failed and was not replaced.
    Error,
    /// The orb's pod disappeared (node lost, evicted, deleted by hand) and was not replaced.
    PodLost,
    /// The AiOrb was deleted.
    Deleted,
    /// The spec cannot be run (the message says what is wrong).
    InvalidSpec,
    /// A pod or Secret with one of the orb's names exists and is not the orb's; it was left
    /// untouched (the message names it).
    NameConflict,
}

impl TerminationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::SessionComplete => "SessionComplete",
            TerminationReason::RoomCleanup => "RoomCleanup",
            TerminationReason::IdleTimeout => "IdleTimeout",
            TerminationReason::MaxLifetime => "MaxLifetime",
            TerminationReason::Error => "Error",
            TerminationReason::PodLost => "PodLost",
            TerminationReason::Deleted => "Deleted",
            TerminationReason::InvalidSpec => "InvalidSpec",
            TerminationReason::NameConflict => "NameConflict",
        }
    }

    pub const ALL: [TerminationReason; 9] = [
        TerminationReason::SessionComplete,
        TerminationReason::RoomCleanup,
        TerminationReason::IdleTimeout,
        TerminationReason::MaxLifetime,
        TerminationReason::Error,
        TerminationReason::PodLost,
        TerminationReason::Deleted,
        TerminationReason::InvalidSpec,
        TerminationReason::NameConflict,
    ];

    /// Reads a reason the orb wrote as the first word of its termination message.
    pub fn from_termination_message(message: &str) -> Option<Self> {
        let word = message.split_whitespace().next()?.trim_end_matches(':');
        Self::ALL.into_iter().find(|r| r.as_str() == word)
    }
}

impl std::fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for OrbPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Condition types the operator maintains. `Ready`, `Reconciling` and `Stalled` follow kstatus so
/// that `kubectl wait --for=condition=Ready` and `helm --wait` understand an orb.
pub mod condition {
    pub const ADMITTED: &str = "Admitted";
    pub const POD_SCHEDULED: &str = "PodScheduled";
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
}

/// Observed state of an orb.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AiOrbStatus {
    // ---- owned by the operator ----
    /// Where the orb is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<OrbPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// 1-based place in the admission queue while `Queued`, written for the first places only (the
    /// operator's `--queue-positions`, 10 by default); an orb further back has none. So a freed
    /// slot rewrites a bounded number of statuses, not the whole queue. `orb-operator queue`
    /// lists every place, and `orb_operator_namespace_queue_length` counts the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i32>,
    /// When the orb was admitted past the concurrency cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<Time>,
    /// When the session's lifetime budget started: the first admission of any AiOrb of this
    /// session (`spec.sessionId`, else the room's current call), or its booked `spec.startAt` if
    /// it was admitted ahead of that. The lifetime counts from here, so replacements and
    /// re-created AiOrbs of one session share one budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_started_at: Option<Time>,
    /// When the orb's pod first became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<Time>,
    /// When the orb reached `Succeeded` or `Failed`; finished orbs are deleted a TTL after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// How the current pod started: `Cold` (created for the orb) or `Warm` (from the warm pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_start: Option<PodStart>,
    /// The orb's current pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The node the current pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// How many times a failed pod was replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<i32>,
    /// Why the orb ended or is ending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_reason: Option<TerminationReason>,
    /// Human-readable detail of the last transition (the pod's termination message on failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    // ---- owned by signaling ----
    /// Humans in the room, as signaling last saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participants: Option<i32>,
    /// The last activity in the room: a human joining or leaving, or voice — the last speech the
    /// orb heard from a human or produced itself, as the orb reported it. Signaling traffic (SDP,
    /// ICE, pings, heartbeats) is not activity. The idle timeout counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_time: Option<Time>,
    /// The orb's session summary: where it is stored and whether the webhook has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SummaryStatus>,
}

/// Delivery state of a session summary (owned by signaling, which stores and delivers it).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SummaryStatus {
    /// The idempotency key the webhook receives (`Idempotency-Key`).
    pub id: String,
    pub state: SummaryState,
    /// The ConfigMap holding the summary until it is delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Time>,
    /// Webhook attempts so far.
    #[serde(default)]
    pub attempts: i32,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// A pending summary is retried until this time, then given up (`Failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_until: Option<Time>,
}

/// Where a summary is on its way to the receiving system.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SummaryState {
    /// Stored durably; the webhook has not acknowledged it yet.
    #[default]
    Pending,
    /// The webhook answered 2xx.
    Delivered,
    /// The retry window passed, or the webhook refused it for good (4xx).
    Failed,
    /// Stored; no webhook is configured.
    Stored,
}

impl SummaryState {
    pub fn as_str(self) -> &'static str {
        match self {
            SummaryState::Pending => "Pending",
            SummaryState::Delivered => "Delivered",
            SummaryState::Failed => "Failed",
            SummaryState::Stored => "Stored",
        }
    }
}

impl AiOrb {
    pub fn phase(&self) -> Option<OrbPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    pub fn is_finished(&self) -> bool {
        self.phase().is_some_and(OrbPhase::is_terminal)
    }
}
