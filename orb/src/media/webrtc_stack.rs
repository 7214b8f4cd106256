//! [`MediaStack`] on webrtc-rs 0.21 (the async layer over the sans-I/O `rtc` core). Each peer
//! has its own connection, an Opus receive task that decodes to PCM and a send task that turns
//! the pacer's encoded frames into RTP (timestamp +960 per 20 ms frame).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
#[cfg(test)]
use std::time::Duration;

use async_trait::async_trait;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceCandidateType, RTCIceConnectionState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, RTCStatsReportEntry, Registry,
    SettingEngineBuilder, StatsSelector, configure_rtcp_reports,
};

use super::{AudioSink, IceServer, MediaError, MediaPath, MediaStack, OutFrame, Peer, PeerEvent, PeerKey, PeerState};
use crate::audio::{Decoder, SAMPLE_RATE};
use crate::config::RtcConfig;
use crate::metrics::Metrics;

const OPUS_PAYLOAD_TYPE: u8 = 111;
/// Encoded frames waiting for one peer's send task: 160 ms. More means the peer is stuck.
const SINK_CAPACITY: usize = 8;

pub struct WebrtcStack {
    config: RtcConfig,
    metrics: Metrics,
    /// What signaling handed out with the join (replaced on every rejoin).
    signaled_ice_servers: Mutex<Vec<IceServer>>,
}

impl WebrtcStack {
    pub fn new(config: RtcConfig, metrics: Metrics) -> Self {
        Self {
            config,
            metrics,
            signaled_ice_servers: Mutex::default(),
        }
    }

    /// The configured servers, then the signaled ones.
    fn ice_servers(&self) -> Vec<RTCIceServer> {
        let signaled = self.signaled_ice_servers.lock().expect("ice servers lock").clone();
        self.config
            .ice_servers
            .iter()
            .chain(signaled.iter())
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect()
    }
}

/// A candidate type as the path it stands for.
fn path_of(typ: RTCIceCandidateType) -> MediaPath {
    match typ {
        RTCIceCandidateType::Relay => MediaPath::Relay,
        RTCIceCandidateType::Prflx => MediaPath::PeerReflexive,
        RTCIceCandidateType::Srflx => MediaPath::ServerReflexive,
        _ => MediaPath::Host,
    }
}

/// A media engine that speaks Opus only.
pub(crate) fn opus_media_engine() -> webrtc::error::Result<MediaEngine> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: OPUS_PAYLOAD_TYPE,
        },
        RtpCodecKind::Audio,
    )?;
    Ok(media_engine)
}

/// A local Opus track with one SSRC, fed pre-built RTP packets.
pub(crate) fn opus_track(stream_id: &str, track_id: &str, ssrc: u32) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream_id.to_owned(),
        track_id.to_owned(),
        track_id.to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: opus_codec(),
            ..Default::default()
        }],
    )))
}

/// One RTP packet carrying one Opus frame.
pub(crate) fn opus_packet(
    payload_type: u8,
    sequence_number: u16,
    timestamp: u32,
    ssrc: u32,
    marker: bool,
    payload: bytes::Bytes,
) -> rtp::Packet {
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            marker,
            payload_type,
            sequence_number,
            timestamp,
            ssrc,
            ..Default::default()
        },
        payload,
    }
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS.to_owned(),
        clock_rate: SAMPLE_RATE,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn stack_err(e: impl std::fmt::Display) -> MediaError {
    MediaError::Stack(e.to_string())
}

#[async_trait]
impl MediaStack for WebrtcStack {
    async fn create_peer(&self, key: PeerKey, events: mpsc::Sender<PeerEvent>) -> Result<Box<dyn Peer>, MediaError> {
        let media_engine = opus_media_engine().map_err(stack_err)?;
        // Sender and receiver reports only: NACK and TWCC buy nothing for one Opus stream.
        let registry = configure_rtcp_reports(Registry::new());

        let mut settings = SettingEngineBuilder::new();
        if let Some(ip) = self.config.public_ip {
            settings = settings.with_nat_1to1_ips(vec![ip.to_string()], RTCIceCandidateType::Host);
        }
        if self.config.udp_addrs.iter().any(|a| a.ip().is_loopback()) {
            settings = settings.with_include_loopback_candidate(true);
        }
        let ice_servers = self.ice_servers();
        let policy = if self.config.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        };

        let mid = Arc::new(Mutex::new(None));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let ice_connected = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(Handler {
            key: key.clone(),
            events: events.clone(),
            mid: mid.clone(),
            tasks: tasks.clone(),
            metrics: self.metrics.clone(),
            ice_connected: ice_connected.clone(),
        });
        let udp_addrs: Vec<SocketAddr> = self.config.udp_addrs.clone();
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_configuration(
                    RTCConfigurationBuilder::new()
                        .with_ice_servers(ice_servers)
                        .with_ice_transport_policy(policy)
                        .build(),
                )
                .with_setting_engine(settings.build())
                .with_media_engine(media_engine)
                .with_interceptor_registry(registry)
                .with_handler(handler)
                .with_udp_addrs(udp_addrs)
                .build()
                .await
                .map_err(stack_err)?,
        );

        let ssrc = crate::random_u64() as u32;
        let track = opus_track("orb", "orb-audio", ssrc);
        let sender = match pc.add_track(track.clone() as Arc<dyn TrackLocal>).await {
            Ok(s) => s,
            Err(e) => {
                let _ = pc.close().await;
                return Err(stack_err(e));
            }
        };
        let (sink, sink_rx) = mpsc::channel(SINK_CAPACITY);
        Ok(Box::new(WebrtcPeer {
            key,
            pc,
            track,
            sender,
            ssrc,
            mid,
            sink,
            sink_rx: Mutex::new(Some(sink_rx)),
            tasks,
            metrics: self.metrics.clone(),
            ice_connected,
        }))
    }

    fn set_signaled_ice_servers(&self, servers: Vec<IceServer>) {
        *self.signaled_ice_servers.lock().expect("ice servers lock") = servers;
    }
}

struct Handler {
    key: PeerKey,
    events: mpsc::Sender<PeerEvent>,
    /// The m-line id candidates are tagged with (the offer's first `a=mid`).
    mid: Arc<Mutex<Option<String>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    metrics: Metrics,
    ice_connected: Arc<AtomicBool>,
}

#[async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        if matches!(
            state,
            RTCIceConnectionState::Connected | RTCIceConnectionState::Completed
        ) {
            self.ice_connected.store(true, Ordering::Relaxed);
        }
    }

    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let Ok(mut init) = event.candidate.to_json() else {
            return;
        };
        // The core tags candidates with an empty mid, which browsers refuse to match.
        init.sdp_mid = self.mid.lock().expect("mid lock").clone();
        init.sdp_mline_index = Some(0);
        let Ok(candidate) = serde_json::to_value(&init) else {
            return;
        };
        let _ = self
            .events
            .send(PeerEvent::LocalCandidate {
                key: self.key.clone(),
                candidate,
            })
            .await;
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let state = match state {
            RTCPeerConnectionState::New => PeerState::New,
            RTCPeerConnectionState::Connecting => PeerState::Connecting,
            RTCPeerConnectionState::Connected => PeerState::Connected,
            RTCPeerConnectionState::Disconnected => PeerState::Disconnected,
            RTCPeerConnectionState::Failed => PeerState::Failed,
            RTCPeerConnectionState::Closed => PeerState::Closed,
            _ => return,
        };
        let _ = self
            .events
            .send(PeerEvent::State {
                key: self.key.clone(),
                state,
            })
            .await;
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if track.kind().await != RtpCodecKind::Audio {
            return;
        }
        let key = self.key.clone();
        let events = self.events.clone();
        let metrics = self.metrics.clone();
        let task = tokio::spawn(async move {
            let mut decoder = match Decoder::new() {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "cannot create an Opus decoder");
                    return;
                }
            };
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(packet) => {
                        metrics.audio_packets_received.inc();
                        if packet.payload.is_empty() {
                            continue;
                        }
                        let pcm = match decoder.decode(&packet.payload) {
                            Ok(pcm) => pcm.to_vec(),
                            Err(e) => {
                                debug!(error = %e, "undecodable Opus packet");
                                continue;
                            }
                        };
                        let event = PeerEvent::Audio {
                            key: key.clone(),
                            pcm,
                            at: Instant::now(),
                        };
                        if events.try_send(event).is_err() {
                            metrics.audio_frames_dropped.inc();
                        }
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
        self.tasks.lock().expect("tasks lock").push(task);
    }
}

struct WebrtcPeer {
    key: PeerKey,
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn webrtc::rtp_transceiver::RtpSender>,
    ssrc: u32,
    mid: Arc<Mutex<Option<String>>>,
    sink: AudioSink,
    sink_rx: Mutex<Option<mpsc::Receiver<OutFrame>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    metrics: Metrics,
    ice_connected: Arc<AtomicBool>,
}

fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=mid:").map(str::to_owned))
}

#[async_trait]
impl Peer for WebrtcPeer {
    async fn answer(&self, offer: &Value) -> Result<Value, MediaError> {
        if let Some(kind) = offer.get("type").and_then(Value::as_str)
            && kind != "offer"
        {
            return Err(MediaError::InvalidOffer(format!(
                "expected type \"offer\", got {kind:?}"
            )));
        }
        let sdp = offer
            .get("sdp")
            .and_then(Value::as_str)
            .ok_or_else(|| MediaError::InvalidOffer("no sdp field".into()))?;
        let desc = RTCSessionDescription::offer(sdp.to_owned()).map_err(|e| MediaError::InvalidOffer(e.to_string()))?;
        *self.mid.lock().expect("mid lock") = first_mid(sdp);
        self.pc
            .set_remote_description(desc)
            .await
            .map_err(|e| MediaError::InvalidOffer(e.to_string()))?;
        let answer = self.pc.create_answer(None).await.map_err(stack_err)?;
        self.pc.set_local_description(answer).await.map_err(stack_err)?;
        let local = self
            .pc
            .local_description()
            .await
            .ok_or_else(|| MediaError::Stack("no local description after answering".into()))?;

        let params = self.sender.get_parameters().await.map_err(stack_err)?;
        let payload_type = params
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
            .ok_or_else(|| MediaError::InvalidOffer("the offer has no Opus audio".into()))?;
        if let Some(rx) = self.sink_rx.lock().expect("sink lock").take() {
            let task = tokio::spawn(send_loop(
                rx,
                self.track.clone(),
                self.ssrc,
                payload_type,
                self.metrics.clone(),
            ));
            self.tasks.lock().expect("tasks lock").push(task);
        }
        debug!(peer = %self.key.user, payload_type, "answered");
        Ok(json!({ "type": "answer", "sdp": local.sdp }))
    }

    async fn add_remote_candidate(&self, candidate: &Value) -> Result<(), MediaError> {
        if super::is_end_of_candidates(candidate) {
            return Ok(());
        }
        let init: RTCIceCandidateInit = match candidate {
            Value::String(s) => RTCIceCandidateInit {
                candidate: s.clone(),
                ..Default::default()
            },
            other => serde_json::from_value(other.clone()).map_err(|e| MediaError::InvalidCandidate(e.to_string()))?,
        };
        self.pc
            .add_ice_candidate(init)
            .await
            .map_err(|e| MediaError::InvalidCandidate(e.to_string()))
    }

    fn audio_sink(&self) -> AudioSink {
        self.sink.clone()
    }

    async fn close(&self) {
        if let Err(e) = self.pc.close().await {
            debug!(error = %e, "closing a peer connection");
        }
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
    }

    async fn media_path(&self) -> Option<MediaPath> {
        let report = self.pc.get_stats(std::time::Instant::now(), StatsSelector::None).await;
        let pair_id = report.transport()?.selected_candidate_pair_id.clone();
        let pair = report.candidate_pairs().find(|p| p.stats.id == pair_id)?;
        // Candidate entries are keyed by the candidate's id with a side prefix (webrtc-rs 0.21).
        let typ = |prefix: &str, id: &str| match report.get(&format!("{prefix}{id}")).or_else(|| report.get(id)) {
            Some(RTCStatsReportEntry::LocalCandidate(c) | RTCStatsReportEntry::RemoteCandidate(c)) => {
                Some(path_of(c.candidate_type))
            }
            _ => None,
        };
        let local = typ("RTCLocalIceCandidate_", &pair.local_candidate_id)?;
        // A remote candidate learnt from a connectivity check was never signaled, so it has no
        // entry of its own: peer reflexive by definition.
        let remote = typ("RTCRemoteIceCandidate_", &pair.remote_candidate_id).unwrap_or(MediaPath::PeerReflexive);
        Some(MediaPath::of_pair(local, remote))
    }

    fn ice_connected(&self) -> bool {
        self.ice_connected.load(Ordering::Relaxed)
    }
}

async fn send_loop(
    mut rx: mpsc::Receiver<OutFrame>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
    metrics: Metrics,
) {
    let mut sequence_number = crate::random_u64() as u16;
    let mut timestamp = crate::random_u64() as u32;
    let mut first = true;
    while let Some(frame) = rx.recv().await {
        if !first {
            timestamp = timestamp.wrapping_add(frame.samples);
        }
        // The marker starts a talk spurt (RFC 3551 §4.1).
        let packet = opus_packet(payload_type, sequence_number, timestamp, ssrc, first, frame.payload);
        first = false;
        sequence_number = sequence_number.wrapping_add(1);
        // Before DTLS is up the core refuses to send; the frame is simply lost, as on a wire.
        if track.write_rtp(packet).await.is_ok() {
            metrics.audio_packets_sent.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A browser-style offer: audio (Opus as `opus_pt`) and video, bundled, trickle ICE.
    fn browser_offer(opus_pt: u8) -> Value {
        let sdp = [
            "v=0",
            "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0 1",
            "a=extmap-allow-mixed",
            "a=msid-semantic: WMS stream",
            &format!("m=audio 9 UDP/TLS/RTP/SAVPF {opus_pt} 0"),
            "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:abcdefghijklmnopqrstuvwx",
            "a=ice-options:trickle",
            "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08",
            "a=setup:actpass",
            "a=mid:0",
            "a=sendrecv",
            "a=msid:stream audio-track",
            "a=rtcp-mux",
            &format!("a=rtpmap:{opus_pt} opus/48000/2"),
            &format!("a=fmtp:{opus_pt} minptime=10;useinbandfec=1"),
            "a=rtpmap:0 PCMU/8000",
            "a=ssrc:1001 cname:browser",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:abcdefghijklmnopqrstuvwx",
            "a=ice-options:trickle",
            "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08",
            "a=setup:actpass",
            "a=mid:1",
            "a=sendrecv",
            "a=msid:stream video-track",
            "a=rtcp-mux",
            "a=rtpmap:96 VP8/90000",
            "a=ssrc:2002 cname:browser",
            "",
        ]
        .join("\r\n");
        json!({ "type": "offer", "sdp": sdp })
    }

    fn stack() -> WebrtcStack {
        let config = RtcConfig {
            ice_servers: vec![],
            relay_only: false,
            public_ip: None,
            udp_addrs: vec!["127.0.0.1:0".parse().unwrap()],
            denied_candidates: Default::default(),
        };
        WebrtcStack::new(config, Metrics::new())
    }

    #[tokio::test]
    async fn answers_a_browser_offer_with_audio_and_declines_video() {
        let (events, mut rx) = mpsc::channel(64);
        let key = PeerKey {
            user: "coach".into(),
            generation: 1,
        };
        let peer = stack().create_peer(key, events).await.unwrap();
        let answer = peer.answer(&browser_offer(111)).await.unwrap();
        assert_eq!(answer["type"], "answer");
        let sdp = answer["sdp"].as_str().unwrap();
        assert!(sdp.contains("a=rtpmap:111 opus/48000/2"), "{sdp}");
        let video = sdp.split("m=video").nth(1).expect("the video section is answered");
        assert!(video.starts_with(" 0 "), "video is declined with port 0: {sdp}");
        // Local candidates trickle with the offer's mid.
        let candidate = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(PeerEvent::LocalCandidate { candidate, .. }) = rx.recv().await {
                    return candidate;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(candidate["sdpMid"], "0");
        assert!(candidate["candidate"].as_str().unwrap().contains("127.0.0.1"));
        peer.close().await;
    }

    #[tokio::test]
    async fn the_offer_decides_the_opus_payload_type() {
        let (events, _rx) = mpsc::channel(64);
        let key = PeerKey {
            user: "firefox".into(),
            generation: 1,
        };
        let peer = stack().create_peer(key, events).await.unwrap();
        let answer = peer.answer(&browser_offer(109)).await.unwrap();
        assert!(
            answer["sdp"].as_str().unwrap().contains("a=rtpmap:109 opus/48000/2"),
            "{answer}"
        );
        peer.close().await;
    }

    #[tokio::test]
    async fn malformed_input_is_refused_with_a_reason() {
        let (events, _rx) = mpsc::channel(64);
        let key = PeerKey {
            user: "x".into(),
            generation: 1,
        };
        let peer = stack().create_peer(key, events).await.unwrap();
        for bad in [
            json!({"type": "answer", "sdp": "v=0"}),
            json!({"type": "offer"}),
            json!({"type": "offer", "sdp": "nonsense"}),
        ] {
            assert!(
                matches!(peer.answer(&bad).await, Err(MediaError::InvalidOffer(_))),
                "{bad}"
            );
        }
        assert!(peer.add_remote_candidate(&Value::Null).await.is_ok());
        assert!(peer.add_remote_candidate(&json!({"candidate": ""})).await.is_ok());
        peer.close().await;
    }
}
