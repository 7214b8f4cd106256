//! Prometheus metrics (`orb_signaling_*`). Labels are small closed sets (message type, reason,
//! result); room, session and user ids never become labels. Hot-path handles are resolved once
//! at start-up so that relaying a message costs no label lookup.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::protocol::ErrorCode;
use crate::room::CloseReason;
use crate::wire::RelayKind;

type Labels = Vec<(&'static str, &'static str)>;

/// Relayed message types besides SDP and ICE (see [`Metrics::relayed_other`]).
pub const OTHER_RELAYED: [&str; 3] = ["ai_status", "session_summary", "orb_error"];
/// Values of `summaries_delivery_attempts_total{result}`.
pub const SUMMARY_DELIVERY_RESULTS: [&str; 3] = ["delivered", "retry", "failed"];
/// Values of `summaries_stored_total{result}`.
/// The refusals are [`crate::summary::Refusal::label`]'s.
pub const SUMMARY_STORE_RESULTS: [&str; 6] = ["stored", "duplicate", "error", "too_large", "too_many", "no_owner"];
/// Values of the `participant_type` label.
pub const PARTICIPANT_TYPES: [&str; 2] = ["human", "ai"];

/// Results of asking a runtime for an orb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrbRequestResult {
    /// A new orb was created.
    Created,
    /// A live orb for the room already existed.
    Existing,
    /// A finished orb was replaced by a new one.
    Replaced,
    /// The runtime could not provide an orb (API error, runtime disabled).
    Failed,
    /// Folded into a request for the room already under way, or answered from one a moment ago:
    /// no API call (a join/leave storm costs the API server nothing).
    Coalesced,
}

impl OrbRequestResult {
    pub const ALL: [OrbRequestResult; 5] = [
        OrbRequestResult::Created,
        OrbRequestResult::Existing,
        OrbRequestResult::Replaced,
        OrbRequestResult::Failed,
        OrbRequestResult::Coalesced,
    ];

    fn as_str(self) -> &'static str {
        match self {
            OrbRequestResult::Created => "created",
            OrbRequestResult::Existing => "existing",
            OrbRequestResult::Replaced => "replaced",
            OrbRequestResult::Failed => "failed",
            OrbRequestResult::Coalesced => "coalesced",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub rooms: Gauge,
    participants: Family<Labels, Gauge>,
    relayed: Family<Labels, Counter>,
    pub relay_latency: Histogram,
    rejected: Family<Labels, Counter>,
    auth_failures: Family<Labels, Counter>,
    connections_refused: Family<Labels, Counter>,
    orb_requests: Family<Labels, Counter>,
    disconnects: Family<Labels, Counter>,
    presence_writes: Family<Labels, Counter>,
    summary_deliveries: Family<Labels, Counter>,
    summaries_stored: Family<Labels, Counter>,
    summary_oldest_pending: Gauge<f64, std::sync::atomic::AtomicU64>,
    summary_store_errors: Counter,
    relay_handles: [Counter; 3],
    /// Frames for other replicas that could not be handed to Redis.
    pub cluster_dropped: Counter,
    /// 1 while Redis answers and this replica hears its inbox (only with `--redis-url`).
    pub redis_up: Gauge,
    turn_credentials_issued: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orb_signaling");
        let connections = Gauge::default();
        registry.register("connections", "Open WebSocket connections", connections.clone());
        let rooms = Gauge::default();
        registry.register("rooms", "Rooms with at least one participant", rooms.clone());
        let participants = Family::<Labels, Gauge>::default();
        registry.register(
            "participants",
            "Participants in rooms, by participant type",
            participants.clone(),
        );
        let relayed = Family::<Labels, Counter>::default();
        registry.register(
            "messages_relayed",
            "Messages forwarded to peers, by type",
            relayed.clone(),
        );
        // From reading the frame to writing it to the receiver's socket; signaling must stay well
        // below a millisecond, so the buckets start at 50µs.
        let relay_latency = Histogram::new([
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ]);
        registry.register(
            "relay_latency_seconds",
            "Time from receiving a relayed message to writing it to the receiver",
            relay_latency.clone(),
        );
        let rejected = Family::<Labels, Counter>::default();
        registry.register(
            "messages_rejected",
            "Inbound messages refused, by reason",
            rejected.clone(),
        );
        let auth_failures = Family::<Labels, Counter>::default();
        registry.register(
            "auth_failures",
            "Connections refused for their room token, by reason",
            auth_failures.clone(),
        );
        let connections_refused = Family::<Labels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused before the upgrade by a connection cap, by reason",
            connections_refused.clone(),
        );
        let orb_requests = Family::<Labels, Counter>::default();
        registry.register(
            "orb_requests",
            "Orb requests to the runtime, by result",
            orb_requests.clone(),
        );
        let disconnects = Family::<Labels, Counter>::default();
        registry.register("disconnects", "Closed connections, by reason", disconnects.clone());
        let presence_writes = Family::<Labels, Counter>::default();
        registry.register(
            "presence_writes",
            "Presence writes to the orb runtime's store, by result",
            presence_writes.clone(),
        );
        let summary_deliveries = Family::<Labels, Counter>::default();
        registry.register(
            "summaries_delivery_attempts",
            "Attempts to post a session summary to the webhook, by result (delivered, retry, failed)",
            summary_deliveries.clone(),
        );
        let summaries_stored = Family::<Labels, Counter>::default();
        registry.register(
            "summaries_stored",
            "Session summaries received from orbs, by result (stored, duplicate, error, or refused: too_large, too_many, no_owner)",
            summaries_stored.clone(),
        );
        let summary_oldest_pending = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "summaries_oldest_pending_seconds",
            "Age of the oldest stored summary the webhook has not acknowledged (0 when none)",
            summary_oldest_pending.clone(),
        );
        let summary_store_errors = Counter::default();
        registry.register(
            "summaries_store_errors",
            "Summary store calls of the delivery loop that failed (the summary is tried again later)",
            summary_store_errors.clone(),
        );
        let cluster_dropped = Counter::default();
        registry.register(
            "cluster_dropped_messages",
            "Messages for other replicas dropped because Redis was unreachable or its queue full",
            cluster_dropped.clone(),
        );
        let redis_up = Gauge::default();
        registry.register(
            "redis_up",
            "Whether Redis answers and this replica hears its inbox (1) or not (0); 1 without Redis",
            redis_up.clone(),
        );
        redis_up.set(1);
        let turn_credentials_issued = Counter::default();
        registry.register(
            "turn_credentials_issued",
            "TURN credentials handed out (GET /ice-servers answers and ice-servers messages with a TURN server)",
            turn_credentials_issued.clone(),
        );
        let relay_handles = RelayKind::ALL.map(|k| relayed.get_or_create(&vec![("type", k.as_str())]).clone());
        // Every series of a closed label set exists from the start, so dashboards and alerts see
        // zeros rather than no data before the first event.
        for kind in OTHER_RELAYED {
            let _ = relayed.get_or_create(&vec![("type", kind)]);
        }
        for participant_type in PARTICIPANT_TYPES {
            let _ = participants.get_or_create(&vec![("participant_type", participant_type)]);
        }
        for code in ErrorCode::ALL {
            let _ = rejected.get_or_create(&vec![("reason", error_code_label(code))]);
        }
        for reason in crate::auth::FAILURE_LABELS {
            let _ = auth_failures.get_or_create(&vec![("reason", reason)]);
        }
        // Present from the start, so that an alert on floods has a series to watch.
        let _ = disconnects.get_or_create(&vec![("reason", CloseReason::Flood.label())]);
        for refusal in crate::admission::Refusal::ALL {
            let _ = connections_refused.get_or_create(&vec![("reason", refusal.label())]);
        }
        for result in OrbRequestResult::ALL {
            let _ = orb_requests.get_or_create(&vec![("result", result.as_str())]);
        }
        for result in SUMMARY_DELIVERY_RESULTS {
            let _ = summary_deliveries.get_or_create(&vec![("result", result)]);
        }
        for result in SUMMARY_STORE_RESULTS {
            let _ = summaries_stored.get_or_create(&vec![("result", result)]);
        }
        Self {
            registry,
            connections,
            rooms,
            participants,
            relayed,
            relay_latency,
            rejected,
            auth_failures,
            connections_refused,
            orb_requests,
            disconnects,
            presence_writes,
            summary_deliveries,
            summaries_stored,
            summary_oldest_pending,
            summary_store_errors,
            relay_handles,
            cluster_dropped,
            redis_up,
            turn_credentials_issued,
        }
    }

    pub fn shared() -> Arc<Self> {
        Arc::new(Self::new())
    }

    pub fn relayed(&self, kind: RelayKind) {
        let i = RelayKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.relay_handles[i].inc();
    }

    /// Messages relayed that are not SDP/ICE (one of [`OTHER_RELAYED`]).
    pub fn relayed_other(&self, kind: &'static str) {
        self.relayed.get_or_create(&vec![("type", kind)]).inc();
    }

    pub fn participants(&self, participant_type: &'static str) -> Gauge {
        self.participants
            .get_or_create(&vec![("participant_type", participant_type)])
            .clone()
    }

    pub fn rejected(&self, code: ErrorCode) {
        self.rejected
            .get_or_create(&vec![("reason", error_code_label(code))])
            .inc();
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures.get_or_create(&vec![("reason", reason)]).inc();
    }

    pub fn connection_refused(&self, refusal: crate::admission::Refusal) {
        self.connections_refused
            .get_or_create(&vec![("reason", refusal.label())])
            .inc();
    }

    pub fn orb_request(&self, result: OrbRequestResult) {
        self.orb_requests
            .get_or_create(&vec![("result", result.as_str())])
            .inc();
    }

    pub fn disconnect(&self, reason: Option<CloseReason>) {
        let label = reason.map_or("client_closed", CloseReason::label);
        self.disconnects.get_or_create(&vec![("reason", label)]).inc();
    }

    pub fn presence_write(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.presence_writes.get_or_create(&vec![("result", result)]).inc();
    }

    pub fn summary_delivery(&self, result: &'static str) {
        self.summary_deliveries.get_or_create(&vec![("result", result)]).inc();
    }

    pub fn summary_stored(&self, result: &'static str) {
        self.summaries_stored.get_or_create(&vec![("result", result)]).inc();
    }

    pub fn summary_store_error(&self) {
        self.summary_store_errors.inc();
    }

    pub fn summary_oldest_pending(&self, seconds: f64) {
        self.summary_oldest_pending.set(seconds);
    }

    /// An ICE server list was handed out: counted when it carries a TURN credential.
    pub fn ice_servers_issued(&self, list: &crate::protocol::IceServerList) {
        if list.ice_servers.iter().any(|server| server.credential.is_some()) {
            self.turn_credentials_issued.inc();
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        orb_telemetry::encode_metrics(&self.registry)
    }
}

fn error_code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::MalformedJson => "malformed_json",
        ErrorCode::UnknownType => "unknown_type",
        ErrorCode::InvalidMessage => "invalid_message",
        ErrorCode::NotJoined => "not_joined",
        ErrorCode::AlreadyJoined => "already_joined",
        ErrorCode::FrameTooLarge => "frame_too_large",
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::RoomFull => "room_full",
        ErrorCode::Unauthorized => "unauthorized",
        ErrorCode::UnknownPeer => "unknown_peer",
        ErrorCode::BinaryNotSupported => "binary_not_supported",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::SummaryRefused => "summary_refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.relayed(RelayKind::IceCandidate);
        m.rejected(ErrorCode::RateLimited);
        m.relay_latency.observe(0.0001);
        let text = m.render();
        for needle in [
            "orb_signaling_connections ",
            "orb_signaling_messages_relayed_total{type=\"ice-candidate\"} 1",
            "orb_signaling_messages_rejected_total{reason=\"rate_limited\"} 1",
            "orb_signaling_relay_latency_seconds_bucket",
            "orb_signaling_auth_failures_total{reason=\"expired\"} 0",
            "orb_signaling_orb_requests_total{result=\"failed\"} 0",
            "orb_signaling_messages_rejected_total{reason=\"malformed_json\"} 0",
            "orb_signaling_participants{participant_type=\"ai\"} 0",
            "orb_signaling_connections_refused_total{reason=\"max_connections_per_client\"} 0",
            "orb_signaling_turn_credentials_issued_total 0",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
