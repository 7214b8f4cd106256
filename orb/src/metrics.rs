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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Every metric the orb exports; cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub peer_connections: Family<StateLabel, Gauge>,
    pub ice_connect_seconds: Histogram,
    pub audio_packets_received: Counter,
    pub audio_packets_sent: Counter,
    pub audio_frames_dropped: Counter,
    pub brain_latency_seconds: Histogram,
    pub participants: Gauge,
    pub uptime_seconds: Gauge<f64, AtomicU64>,
    pub signaling_connected: Gauge,
    pub signaling_reconnects: Counter,
    pub peer_errors: Family<KindLabel, Counter>,
    pub brain_errors: Counter,
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
        let signaling_connected = Gauge::default();
        registry.register(
            "signaling_connected",
            "1 while the signaling socket is joined",
            signaling_connected.clone(),
        );
        let signaling_reconnects = Counter::default();
        registry.register(
            "signaling_reconnects",
            "Times the signaling socket dropped and was retried",
            signaling_reconnects.clone(),
        );
        let peer_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "peer_errors",
            "Signaling input from a peer that was refused (invalid offer or candidate)",
            peer_errors.clone(),
        );
        let brain_errors = Counter::default();
        registry.register(
            "brain_errors",
            "Errors the brain reported and survived",
            brain_errors.clone(),
        );
        Self {
            registry: Arc::new(registry),
            peer_connections,
            ice_connect_seconds,
            audio_packets_received,
            audio_packets_sent,
            audio_frames_dropped,
            brain_latency_seconds,
            participants,
            uptime_seconds,
            signaling_connected,
            signaling_reconnects,
            peer_errors,
            brain_errors,
            last_brain_latency_us: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
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
        m.peer_errors.get_or_create(&KindLabel { kind: "invalid_offer" }).inc();
        let text = m.encode();
        for name in [
            "orb_audio_packets_sent_total 1",
            "orb_peer_connections{state=\"connected\"} 1",
            "orb_peer_errors_total{kind=\"invalid_offer\"} 1",
            "orb_brain_latency_seconds_bucket",
            "orb_ice_connect_seconds_count",
            "orb_uptime_seconds",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
