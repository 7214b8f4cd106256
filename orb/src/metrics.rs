//! Prometheus metrics. Names carry the `orb_` prefix; room, session and user ids never become
//! labels (one orb serves one room, so they would only add cardinality).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::candidates::DropReason;
use crate::media::{ConnectFailure, MediaPath, PeerState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: &'static str,
}

/// Why input from a peer (or about it) was refused; the `kind` label of `orb_peer_errors_total`
/// and the `code` of the `orb_error` sent to that peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerErrorKind {
    InvalidOffer,
    InvalidCandidate,
    PeerSetup,
    Unauthorized,
}

impl PeerErrorKind {
    pub const ALL: [PeerErrorKind; 4] = [
        PeerErrorKind::InvalidOffer,
        PeerErrorKind::InvalidCandidate,
        PeerErrorKind::PeerSetup,
        PeerErrorKind::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PeerErrorKind::InvalidOffer => "invalid_offer",
            PeerErrorKind::InvalidCandidate => "invalid_candidate",
            PeerErrorKind::PeerSetup => "peer_setup",
            PeerErrorKind::Unauthorized => "unauthorized",
        }
    }
}

/// Every metric the orb exports; cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub peer_connections: Family<StateLabel, Gauge>,
    pub ice_connect_seconds: Histogram,
    pub peer_connect_failures: Family<StageLabel, Counter>,
    pub peer_media_paths: Family<PathLabel, Counter>,
    pub audio_packets_received: Counter,
    pub audio_packets_sent: Counter,
    pub audio_frames_dropped: Counter,
    pub brain_latency_seconds: Histogram,
    pub participants: Gauge,
    pub uptime_seconds: Gauge<f64, AtomicU64>,
    pub room_connected: Gauge,
    pub room_reconnects: Counter,
    pub peer_errors: Family<KindLabel, Counter>,
    pub ice_candidates_dropped: Family<ReasonLabel, Counter>,
    pub brain_errors: Counter,
    pub summaries_unacknowledged: Counter,
    pub summaries_refused: Counter,
    /// The latest brain latency in microseconds (0 = none yet), for the heartbeat.
    pub last_brain_latency_us: Arc<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orb");
        let peer_connections = Family::<StateLabel, Gauge>::default();
        registry.register(
            "peer_connections",
            "WebRTC peer connections by state",
            peer_connections.clone(),
        );
        let latency_buckets = [0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
        let ice_connect_seconds = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        registry.register(
            "ice_connect_seconds",
            "Time from a human's offer to the peer connection being connected",
            ice_connect_seconds.clone(),
        );
        let peer_connect_failures = Family::<StageLabel, Counter>::default();
        registry.register(
            "peer_connect_failures",
            "Peer connections that failed: before ICE found a path (ice), in the DTLS handshake (dtls), or after carrying media (lost)",
            peer_connect_failures.clone(),
        );
        let peer_media_paths = Family::<PathLabel, Counter>::default();
        registry.register(
            "peer_media_paths",
            "Peer connections that connected, by the selected candidate pair's type (relay when either end is a relay)",
            peer_media_paths.clone(),
        );
        let audio_packets_received = Counter::default();
        registry.register(
            "audio_packets_received",
            "Opus packets received from humans",
            audio_packets_received.clone(),
        );
        let audio_packets_sent = Counter::default();
        registry.register(
            "audio_packets_sent",
            "Opus packets sent to humans",
            audio_packets_sent.clone(),
        );
        let audio_frames_dropped = Counter::default();
        registry.register(
            "audio_frames_dropped",
            "Audio frames dropped because a consumer fell behind",
            audio_frames_dropped.clone(),
        );
        let brain_latency_seconds = Histogram::new(latency_buckets);
        registry.register(
            "brain_latency_seconds",
            "Time from the end of human speech to the first response audio sent",
            brain_latency_seconds.clone(),
        );
        let participants = Gauge::default();
        registry.register("participants", "Humans in the room", participants.clone());
        let uptime_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "uptime_seconds",
            "Seconds since the orb started",
            uptime_seconds.clone(),
        );
        // `room_`, not `signaling_`: the `orb_signaling_` prefix belongs to the signaling server.
        let room_connected = Gauge::default();
        registry.register(
            "room_connected",
            "1 while the orb's signaling socket is joined to its room",
            room_connected.clone(),
        );
        let room_reconnects = Counter::default();
        registry.register(
            "room_reconnects",
            "Times the orb's signaling socket dropped and was retried",
            room_reconnects.clone(),
        );
        let peer_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "peer_errors",
            "Signaling input from a peer that was refused (invalid offer or candidate)",
            peer_errors.clone(),
        );
        let ice_candidates_dropped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "ice_candidates_dropped",
            "Remote ICE candidates dropped before the WebRTC stack (denied address, hostname, malformed)",
            ice_candidates_dropped.clone(),
        );
        let brain_errors = Counter::default();
        registry.register(
            "brain_errors",
            "Errors the brain reported and survived",
            brain_errors.clone(),
        );
        let summaries_unacknowledged = Counter::default();
        registry.register(
            "summaries_unacknowledged",
            "Session summaries signaling did not acknowledge as stored before the orb exited",
            summaries_unacknowledged.clone(),
        );
        let summaries_refused = Counter::default();
        registry.register(
            "summaries_refused",
            "Session summaries signaling refused to store for good (summary_refused: too large, too many, no owner)",
            summaries_refused.clone(),
        );
        // Every series of a closed label set exists from the start, so dashboards and alerts see
        // zeros rather than no data before the first event.
        for state in PeerState::ALL {
            let _ = peer_connections.get_or_create(&StateLabel { state: state.as_str() });
        }
        for stage in ConnectFailure::ALL {
            let _ = peer_connect_failures.get_or_create(&StageLabel { stage: stage.as_str() });
        }
        for path in MediaPath::ALL {
            let _ = peer_media_paths.get_or_create(&PathLabel { path: path.as_str() });
        }
        for kind in PeerErrorKind::ALL {
            let _ = peer_errors.get_or_create(&KindLabel { kind: kind.as_str() });
        }
        for reason in DropReason::ALL {
            let _ = ice_candidates_dropped.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            });
        }
        Self {
            registry: Arc::new(registry),
            peer_connections,
            ice_connect_seconds,
            peer_connect_failures,
            peer_media_paths,
            audio_packets_received,
            audio_packets_sent,
            audio_frames_dropped,
            brain_latency_seconds,
            participants,
            uptime_seconds,
            room_connected,
            room_reconnects,
            peer_errors,
            ice_candidates_dropped,
            brain_errors,
            summaries_unacknowledged,
            summaries_refused,
            last_brain_latency_us: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts refused peer input.
    pub fn peer_error(&self, kind: PeerErrorKind) {
        self.peer_errors.get_or_create(&KindLabel { kind: kind.as_str() }).inc();
    }

    /// Counts a remote candidate dropped by the deny list.
    pub fn candidate_dropped(&self, reason: DropReason) {
        self.ice_candidates_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        orb_telemetry::encode_metrics(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let m = Metrics::new();
        m.audio_packets_sent.inc();
        m.peer_connections
            .get_or_create(&StateLabel { state: "connected" })
            .set(1);
        m.peer_error(PeerErrorKind::InvalidOffer);
        let text = m.encode();
        for name in [
            "orb_audio_packets_sent_total 1",
            "orb_peer_connections{state=\"connected\"} 1",
            "orb_peer_errors_total{kind=\"invalid_offer\"} 1",
            "orb_brain_latency_seconds_bucket",
            "orb_ice_connect_seconds_count",
            "orb_uptime_seconds",
            "orb_peer_connections{state=\"failed\"} 0",
            "orb_peer_errors_total{kind=\"unauthorized\"} 0",
            "orb_ice_candidates_dropped_total{reason=\"denied_address\"} 0",
            "orb_ice_candidates_dropped_total{reason=\"hostname\"} 0",
            "orb_peer_connect_failures_total{stage=\"ice\"} 0",
            "orb_peer_connect_failures_total{stage=\"lost\"} 0",
            "orb_peer_media_paths_total{path=\"relay\"} 0",
            "orb_peer_media_paths_total{path=\"host\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
