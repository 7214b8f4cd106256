//! A scripted human for tests and benchmarks: joins a room through signaling like the browser
//! client of seed 001, offers a WebRTC connection to the AI participant, sends a tone (or
//! silence) as paced Opus, and hands every decoded frame it receives to the caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use orb_protocol::{ClientMessage, ParticipantType, Relay, ServerMessage, UserRole};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    configure_rtcp_reports,
};

pub use webrtc::peer_connection::RTCIceServer;

use crate::audio::{Decoder, Encoder, FRAME_DURATION, FRAME_SAMPLES, tone, tone_power};
use crate::media::webrtc_stack::{opus_media_engine, opus_packet, opus_track};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A decoded frame the human received, with its arrival time.
#[derive(Clone, Debug)]
pub struct HeardFrame {
    pub at: Instant,
    pub pcm: Vec<i16>,
}

/// Where the human sends its own audio from.
#[derive(Clone, Debug, PartialEq)]
pub enum Voice {
    Silence,
    Tone(f32),
    /// 48 kHz mono samples (real speech: see [`super::speech`]) said once, then silence.
    Clip(Arc<[i16]>),
}

pub struct Human {
    pub user_id: String,
    ws_tx: mpsc::UnboundedSender<String>,
    pub signals: mpsc::UnboundedReceiver<ServerMessage>,
    pub audio: mpsc::UnboundedReceiver<HeardFrame>,
    state: watch::Receiver<RTCPeerConnectionState>,
    voice: watch::Sender<Voice>,
    /// When the voice last changed from silence to a tone (for latency measurements).
    pub voice_started: Arc<std::sync::Mutex<Option<Instant>>>,
    pub packets_received: Arc<AtomicU64>,
    pc: Arc<dyn PeerConnection>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Handler {
    ws_tx: mpsc::UnboundedSender<String>,
    ai_id: Arc<std::sync::Mutex<Option<String>>>,
    state: watch::Sender<RTCPeerConnectionState>,
    audio: mpsc::UnboundedSender<HeardFrame>,
    packets: Arc<AtomicU64>,
}

fn client_json(msg: &ClientMessage) -> String {
    serde_json::to_string(msg).expect("client messages serialise")
}

#[async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let Ok(init) = event.candidate.to_json() else { return };
        let to = self.ai_id.lock().expect("ai id").clone();
        let relay = Relay {
            to_id: to,
            candidate: serde_json::to_value(init).ok(),
            ..Relay::default()
        };
        let _ = self.ws_tx.send(client_json(&ClientMessage::IceCandidate(relay)));
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let audio = self.audio.clone();
        let packets = self.packets.clone();
        tokio::spawn(async move {
            let Ok(mut decoder) = Decoder::new() else { return };
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = event {
                    packets.fetch_add(1, Ordering::Relaxed);
                    if let Ok(pcm) = decoder.decode(&p.payload) {
                        let _ = audio.send(HeardFrame {
                            at: Instant::now(),
                            pcm: pcm.to_vec(),
                        });
                    }
                }
            }
        });
    }
}

/// Where a human's media goes from: its addresses and ICE servers.
#[derive(Clone, Debug)]
pub struct HumanNet {
    /// Local UDP addresses (`ip:0`); loopback ones also gather loopback candidates.
    pub udp_addrs: Vec<String>,
    pub ice_servers: Vec<RTCIceServer>,
}

impl Default for HumanNet {
    /// Loopback only, no ICE servers: the orb on the same machine.
    fn default() -> Self {
        Self {
            udp_addrs: vec!["127.0.0.1:0".to_owned()],
            ice_servers: vec![],
        }
    }
}

impl Human {
    /// Joins `room` at `signaling_url` (base `ws://host:port`) and offers to the AI participant
    /// as soon as it is in the room.
    pub async fn join(signaling_url: &str, room: &str, user_id: &str, role: UserRole) -> Result<Self, BoxError> {
        Self::join_from(signaling_url, room, user_id, role, HumanNet::default()).await
    }

    /// [`Human::join`] from the addresses and with the ICE servers of `net`.
    pub async fn join_from(
        signaling_url: &str,
        room: &str,
        user_id: &str,
        role: UserRole,
        net: HumanNet,
    ) -> Result<Self, BoxError> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{signaling_url}/ws-simple/{room}")).await?;
        let (mut ws_sink, mut ws_stream) = ws.split();
        let (ws_tx, mut ws_rx) = mpsc::unbounded_channel::<String>();
        let mut tasks = vec![tokio::spawn(async move {
            while let Some(text) = ws_rx.recv().await {
                if ws_sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            let _ = ws_sink.close().await;
        })];

        let media_engine = opus_media_engine()?;
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (audio_tx, audio) = mpsc::unbounded_channel();
        let ai_id = Arc::new(std::sync::Mutex::new(None));
        let packets_received = Arc::new(AtomicU64::new(0));
        let handler = Arc::new(Handler {
            ws_tx: ws_tx.clone(),
            ai_id: ai_id.clone(),
            state: state_tx,
            audio: audio_tx,
            packets: packets_received.clone(),
        });
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().with_ice_servers(net.ice_servers).build())
                .with_setting_engine(
                    SettingEngineBuilder::new()
                        .with_include_loopback_candidate(net.udp_addrs.iter().any(|a| a.starts_with("127.")))
                        .build(),
                )
                .with_media_engine(media_engine)
                .with_interceptor_registry(configure_rtcp_reports(Registry::new()))
                .with_handler(handler)
                .with_udp_addrs(net.udp_addrs)
                .build()
                .await?,
        );
        let ssrc = crate::random_u64() as u32;
        let track = opus_track(&format!("{user_id}-stream"), &format!("{user_id}-audio"), ssrc);
        let sender = pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;

        let (signals_tx, signals) = mpsc::unbounded_channel();
        let reader_pc = pc.clone();
        let reader_ws = ws_tx.clone();
        let reader_ai = ai_id.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(frame)) = ws_stream.next().await {
                let Message::Text(text) = frame else { continue };
                let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else {
                    continue;
                };
                let offer_to = match &msg {
                    ServerMessage::PeerDiscovery { peers } => peers
                        .iter()
                        .find(|p| p.participant_type == ParticipantType::Ai)
                        .map(|p| p.user_id.clone()),
                    ServerMessage::UserJoined {
                        user_id,
                        participant_type: ParticipantType::Ai,
                        should_create_offer: true,
                        ..
                    } => Some(user_id.clone()),
                    _ => None,
                };
                if let Some(ai) = offer_to {
                    *reader_ai.lock().expect("ai id") = Some(ai.clone());
                    if let Err(e) = offer(&*reader_pc, &reader_ws, &ai).await {
                        eprintln!("test human could not offer: {e}");
                    }
                }
                match &msg {
                    ServerMessage::Answer(r) => {
                        if let Some(sdp) = r.answer.as_ref().and_then(|a| a.get("sdp")).and_then(Value::as_str)
                            && let Ok(desc) = RTCSessionDescription::answer(sdp.to_owned())
                        {
                            let _ = reader_pc.set_remote_description(desc).await;
                        }
                    }
                    ServerMessage::IceCandidate(r) => {
                        if let Some(c) = r.candidate.clone()
                            && let Ok(init) = serde_json::from_value::<RTCIceCandidateInit>(c)
                        {
                            let _ = reader_pc.add_ice_candidate(init).await;
                        }
                    }
                    _ => {}
                }
                let _ = signals_tx.send(msg);
            }
        }));

        let payload_type = 111;
        let (voice, voice_rx) = watch::channel(Voice::Silence);
        let voice_started = Arc::new(std::sync::Mutex::new(None));
        tasks.push(tokio::spawn(send_voice(
            track,
            sender,
            payload_type,
            ssrc,
            voice_rx,
            voice_started.clone(),
        )));

        let join = ClientMessage::Join {
            room_id: Some(room.to_owned()),
            user_id: Some(user_id.to_owned()),
            user_role: Some(role),
            user_name: Some(user_id.to_owned()),
            participant_type: Some(ParticipantType::Human),
        };
        let _ = ws_tx.send(client_json(&join));
        Ok(Self {
            user_id: user_id.to_owned(),
            ws_tx,
            signals,
            audio,
            state,
            voice,
            voice_started,
            packets_received,
            pc,
            tasks,
        })
    }

    /// Waits until the WebRTC connection to the orb is up.
    pub async fn wait_connected(&mut self, timeout: Duration) -> bool {
        let fut = self.state.wait_for(|s| *s == RTCPeerConnectionState::Connected);
        matches!(tokio::time::timeout(timeout, fut).await, Ok(Ok(_)))
    }

    pub fn set_voice(&self, voice: Voice) {
        self.voice.send_replace(voice);
    }

    /// Says `clip` (48 kHz mono) once; returns how long it lasts.
    pub fn say(&self, clip: &[i16]) -> Duration {
        self.set_voice(Voice::Clip(clip.into()));
        Duration::from_millis(clip.len() as u64 * 1000 / u64::from(crate::audio::SAMPLE_RATE))
    }

    /// Waits for `frames` consecutive received frames dominated by `freq_hz`; returns the
    /// arrival time of the first of them.
    pub async fn wait_for_tone(&mut self, freq_hz: f32, frames: usize, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut run = 0;
        let mut first = None;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.audio.recv()).await.ok()??;
            if tone_power(&frame.pcm, freq_hz) > 0.5 {
                first.get_or_insert(frame.at);
                run += 1;
                if run >= frames {
                    return first;
                }
            } else {
                run = 0;
                first = None;
            }
        }
    }

    /// Drops audio received so far.
    pub fn drain_audio(&mut self) {
        while self.audio.try_recv().is_ok() {}
    }

    /// Waits for a signaling message matching `pred`.
    pub async fn wait_signal(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Option<ServerMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.signals.recv()).await.ok()??;
            if pred(&msg) {
                return Some(msg);
            }
        }
    }

    /// Sends a raw JSON message on the signaling socket.
    pub fn send_raw(&self, msg: Value) {
        let _ = self.ws_tx.send(msg.to_string());
    }

    /// Leaves the room and closes the connection.
    pub async fn leave(self) {
        let _ = self.ws_tx.send(client_json(&ClientMessage::Leave));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = self.pc.close().await;
    }
}

async fn offer(pc: &dyn PeerConnection, ws: &mpsc::UnboundedSender<String>, to: &str) -> Result<(), BoxError> {
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    let local = pc.local_description().await.ok_or("no local description")?;
    let relay = Relay {
        to_id: Some(to.to_owned()),
        offer: Some(json!({ "type": "offer", "sdp": local.sdp })),
        ..Relay::default()
    };
    let _ = ws.send(client_json(&ClientMessage::Offer(relay)));
    Ok(())
}

async fn send_voice(
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn webrtc::rtp_transceiver::RtpSender>,
    default_payload_type: u8,
    ssrc: u32,
    mut voice: watch::Receiver<Voice>,
    voice_started: Arc<std::sync::Mutex<Option<Instant>>>,
) {
    let Ok(mut encoder) = Encoder::new() else { return };
    let mut ticker = tokio::time::interval(FRAME_DURATION);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let (mut seq, mut ts, mut phase, mut clip_at) = (0u16, 0u32, 0usize, 0usize);
    let mut payload_type = None;
    let mut current = Voice::Silence;
    loop {
        ticker.tick().await;
        if voice.has_changed().unwrap_or(false) {
            let next = voice.borrow_and_update().clone();
            if current == Voice::Silence && next != Voice::Silence {
                *voice_started.lock().expect("voice lock") = Some(Instant::now());
            }
            current = next;
            clip_at = 0;
        }
        let pcm = match &current {
            Voice::Silence => vec![0i16; FRAME_SAMPLES],
            Voice::Tone(f) => tone(*f, FRAME_SAMPLES, 8000, phase),
            Voice::Clip(clip) => {
                let end = (clip_at + FRAME_SAMPLES).min(clip.len());
                let mut frame = clip[clip_at..end].to_vec();
                frame.resize(FRAME_SAMPLES, 0);
                clip_at = end;
                if end == clip.len() {
                    current = Voice::Silence;
                }
                frame
            }
        };
        phase += FRAME_SAMPLES;
        let Ok(encoded) = encoder.encode(&pcm) else { continue };
        let payload = bytes::Bytes::copy_from_slice(encoded);
        if payload_type.is_none() {
            payload_type = match sender.get_parameters().await {
                Ok(p) => p.rtp_parameters.codecs.first().map(|c| c.payload_type),
                Err(_) => None,
            };
        }
        let pt = payload_type.unwrap_or(default_payload_type);
        let packet = opus_packet(pt, seq, ts, ssrc, seq == 0, payload);
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(FRAME_SAMPLES as u32);
        let _ = track.write_rtp(packet).await;
    }
}

impl Drop for Human {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
