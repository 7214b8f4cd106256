//! The session loop: one task owns the room state (peers, participants, transcript, status)
//! and reacts to signaling, peer, brain and timer events in turn, so no state is shared
//! behind locks. It ends on a signal, a deadline or a fatal error, and then says goodbye.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use orb_protocol::{AiStatus, ClientMessage, ErrorCode, ParticipantType, Relay, ServerMessage, UserRole};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::brain::{Brain, BrainError, BrainEvent, BrainInput, BrainIo, HeardFrame, Speaker, Summarizer};
use crate::candidates::{self, DropReason, Verdict};
use crate::config::Config;
use crate::health::Health;
use crate::lifecycle::{Deadlines, Ending, write_termination_message};
use crate::media::{ConnectFailure, IceServer, MediaStack, Peer, PeerEvent, PeerKey, PeerState};
use crate::metrics::{Metrics, PathLabel, PeerErrorKind, StageLabel, StateLabel};
use crate::playout::{self, PacerCmd};
use crate::signaling::{self, SignalingConfig, SignalingEvent, SignalingHandle};
use crate::summary::{
    RollingSummary, SessionRecord, SummaryIds, SummaryPolicy, TranscriptLine, Written, session_summary,
};
use orb_speech::vad::{VadConfig, VoiceActivity};

/// Seed 001: a heartbeat every 30 s.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// How long the goodbye (final status and summary) may take before the orb exits anyway; well
/// inside the pod's 10 s grace period.
pub const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the orb keeps its summary, re-sending it across reconnects, until signaling
/// acknowledges that it is stored durably; counted from the start of the goodbye, so writing the
/// summary's last step (at most [`SummaryPolicy::final_timeout`]) is inside it. Inside the pod's
/// 10 s grace period with room for the rest of the goodbye.
pub const SUMMARY_ACK_TIMEOUT: Duration = Duration::from_secs(7);

/// Knobs tests turn; production uses the defaults.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub heartbeat_interval: Duration,
    /// From the start of the goodbye, writing the summary's last step included.
    pub summary_ack_timeout: Duration,
    pub summary: SummaryPolicy,
    pub checkpoint_interval: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: HEARTBEAT_INTERVAL,
            summary_ack_timeout: SUMMARY_ACK_TIMEOUT,
            summary: SummaryPolicy::default(),
            checkpoint_interval: crate::checkpoint::CHECKPOINT_INTERVAL,
        }
    }
}

/// How often the orb reports voice activity (when there was some): often enough that signaling's
/// view stays well inside the idle timeout, rarely enough to cost nothing.
pub fn activity_report_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 5).clamp(Duration::from_millis(500), Duration::from_secs(10))
}

/// How the delivery of the session summary ended.
enum SummaryDelivery {
    /// Signaling acknowledged it as stored.
    Stored,
    /// Signaling will never store it (`summary_refused`); its message says why.
    Refused(String),
    /// No acknowledgement before the timeout, or signaling is gone.
    Unacknowledged,
}

struct PeerEntry {
    key: PeerKey,
    peer: Box<dyn Peer>,
    state: PeerState,
    offered_at: Instant,
    connected: bool,
    /// Whether this human is speaking: what counts as activity for the idle timeout (a voice,
    /// not a fan, a keyboard or a tone).
    voice: VoiceActivity,
}

struct Session {
    config: Config,
    metrics: Metrics,
    health: Health,
    media: Arc<dyn MediaStack>,
    signaling: SignalingHandle,
    brain_tx: mpsc::Sender<BrainInput>,
    pacer_tx: mpsc::Sender<PacerCmd>,
    peer_tx: mpsc::Sender<PeerEvent>,
    peers: HashMap<Arc<str>, PeerEntry>,
    generation: u64,
    /// Humans in the room now.
    present: BTreeMap<Arc<str>, UserRole>,
    record: SessionRecord,
    /// The summary's content, written as the session goes.
    rolling: RollingSummary,
    deadlines: Deadlines,
    joined: bool,
    brain_ready: bool,
    brain_status: AiStatus,
    speaking: bool,
    sent_status: Option<AiStatus>,
    /// The last voice heard from a human or spoken by the orb (wall clock, for signaling).
    last_voice: Option<SystemTime>,
    /// The last voice activity told to signaling.
    reported_voice: Option<SystemTime>,
    /// This orb's summary id: the idempotency key of its delivery.
    summary_id: String,
    /// What the last checkpoint sent covered; `None` before the first.
    checkpointed: Option<crate::checkpoint::Extent>,
    /// No checkpoint before this (large ones are spaced out).
    next_checkpoint: Instant,
    checkpoint_interval: Duration,
}

/// A brain running before its session: a warm orb starts its brain while it waits for a room, so
/// the brain (its AI service session, its model) is ready when the room comes.
pub struct StartedBrain {
    task: tokio::task::JoinHandle<Result<(), BrainError>>,
    input: mpsc::Sender<BrainInput>,
    events: mpsc::Receiver<BrainEvent>,
    summarizer: Arc<dyn Summarizer>,
    ready: bool,
}

impl StartedBrain {
    pub fn start(brain: Box<dyn Brain>) -> Self {
        let (input, brain_in) = mpsc::channel(256);
        let (events_tx, events) = mpsc::channel(256);
        info!(brain = brain.name(), "starting the brain");
        let summarizer = brain.summarizer();
        let task = tokio::spawn(brain.run(BrainIo {
            input: brain_in,
            events: events_tx,
        }));
        Self {
            task,
            input,
            events,
            summarizer,
            ready: false,
        }
    }

    /// Waits until the brain says it is ready (events before that are only logged: no room hears
    /// them). An error if the brain stops first.
    pub async fn until_ready(&mut self) -> Result<(), String> {
        while !self.ready {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(BrainEvent::Ready) => self.ready = true,
                    Some(BrainEvent::Error(e)) => warn!(error = %e, "the brain reported a problem while warm"),
                    Some(_) => {}
                    None => return Err("the brain stopped before it was ready".into()),
                },
                result = &mut self.task => {
                    return Err(match result {
                        Ok(Ok(())) => "the brain stopped before it was ready".into(),
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => format!("the brain crashed: {e}"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Runs the orb until it ends; returns why. `shutdown` resolves with a signal name.
pub async fn run(
    config: Config,
    media: Arc<dyn MediaStack>,
    brain: Box<dyn Brain>,
    metrics: Metrics,
    health: Health,
    options: SessionOptions,
    shutdown: impl Future<Output = &'static str>,
) -> Ending {
    run_started(
        config,
        media,
        StartedBrain::start(brain),
        metrics,
        health,
        options,
        shutdown,
    )
    .await
}

/// [`run`] with a brain already started (a warm orb's).
pub async fn run_started(
    config: Config,
    media: Arc<dyn MediaStack>,
    brain: StartedBrain,
    metrics: Metrics,
    health: Health,
    options: SessionOptions,
    shutdown: impl Future<Output = &'static str>,
) -> Ending {
    let (sig_tx, mut sig_rx) = mpsc::unbounded_channel();
    let (signaling, sig_task) = signaling::spawn(
        SignalingConfig::new(
            config.signaling_endpoint.clone(),
            config.token.clone(),
            config.room.clone(),
            config.user_id.clone(),
        ),
        sig_tx,
    );
    let StartedBrain {
        task: mut brain_task,
        input: brain_tx,
        events: mut brain_rx,
        summarizer,
        ready: brain_ready,
    } = brain;
    // First of all its input, so the model knows whom it talks to before it hears them.
    let context = config.session_context();
    let _ = brain_tx.send(BrainInput::Context(context.clone())).await;
    let (pacer_tx, pacer_rx) = mpsc::channel(256);
    let (speaking_tx, mut speaking_rx) = mpsc::channel(8);
    let pacer_task = tokio::spawn(playout::run(pacer_rx, speaking_tx, metrics.clone()));
    let (peer_tx, mut peer_rx) = mpsc::channel(1024);

    let now = Instant::now();
    let mut s = Session {
        deadlines: Deadlines::new(now, config.max_lifetime, config.idle_timeout),
        config,
        metrics,
        health,
        media,
        signaling,
        brain_tx,
        pacer_tx,
        peer_tx,
        peers: HashMap::new(),
        generation: 0,
        present: BTreeMap::new(),
        record: SessionRecord::default(),
        rolling: RollingSummary::start(summarizer, options.summary.clone(), context),
        joined: false,
        brain_ready,
        brain_status: AiStatus::Listening,
        speaking: false,
        sent_status: None,
        last_voice: None,
        reported_voice: None,
        summary_id: format!(
            "sum-{:x}-{:x}-{:016x}",
            crate::procstat::unix_millis(),
            std::process::id(),
            crate::random_u64()
        ),
        checkpointed: None,
        next_checkpoint: now,
        checkpoint_interval: options.checkpoint_interval,
    };
    s.update_peer_gauges();
    let mut heartbeat = tokio::time::interval_at(now + options.heartbeat_interval, options.heartbeat_interval);
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    let report_every = activity_report_interval(s.config.idle_timeout);
    let mut activity_report = tokio::time::interval_at(now + report_every, report_every);
    let mut checkpoint = tokio::time::interval_at(now + options.checkpoint_interval, options.checkpoint_interval);
    tokio::pin!(shutdown);
    let mut brain_done = false;

    let ending = loop {
        let (deadline, deadline_ending) = s.deadlines.next();
        tokio::select! {
            name = &mut shutdown => break Ending::Signal(name),
            _ = tokio::time::sleep_until(deadline) => break deadline_ending,
            Some(event) = sig_rx.recv() => {
                if let Some(ending) = s.on_signaling(event).await { break ending; }
            }
            Some(event) = peer_rx.recv() => s.on_peer_event(event).await,
            Some(event) = brain_rx.recv() => s.on_brain_event(event).await,
            result = &mut brain_task, if !brain_done => {
                brain_done = true;
                match result {
                    Ok(Ok(())) => info!("the brain stopped"),
                    Ok(Err(e)) => break Ending::Error(e.to_string()),
                    Err(e) => break Ending::Error(format!("the brain crashed: {e}")),
                }
            }
            Some(speaking) = speaking_rx.recv() => {
                s.speaking = speaking;
                // Its own speech is activity too: the start and the end of every utterance.
                s.voice(Instant::now());
                s.publish_status();
            }
            _ = heartbeat.tick() => s.send_heartbeat(),
            _ = activity_report.tick() => s.report_activity(),
            _ = checkpoint.tick() => s.checkpoint_if_grown(),
            _ = beat.tick() => s.health.beat(),
        }
    };

    s.goodbye(&ending, &mut sig_rx, &options).await;
    drop(s.brain_tx);
    drop(s.pacer_tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), pacer_task).await;
    brain_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), sig_task).await;
    ending
}

impl Session {
    /// Voice was heard or spoken at `at`: the idle deadline moves, and signaling will hear of it.
    fn voice(&mut self, at: Instant) {
        self.deadlines.activity(at);
        let wall = SystemTime::now()
            .checked_sub(at.elapsed())
            .unwrap_or_else(SystemTime::now);
        self.last_voice = Some(self.last_voice.map_or(wall, |t| t.max(wall)));
    }

    /// Tells signaling the last voice activity when it moved since the last report. A long
    /// utterance of the orb's own counts while it lasts.
    fn report_activity(&mut self) {
        if self.speaking {
            self.voice(Instant::now());
        }
        let Some(last) = self.last_voice else { return };
        if self.reported_voice.is_some_and(|r| r >= last) || !self.joined {
            return;
        }
        self.reported_voice = Some(last);
        self.signaling.send(ClientMessage::OrbActivity {
            last_voice_activity: crate::procstat::unix_millis_of(last),
        });
    }

    fn role_of(&self, user: &str) -> UserRole {
        self.present.get(user).copied().unwrap_or(if user == self.config.coach {
            UserRole::Coach
        } else {
            UserRole::Client
        })
    }

    fn update_ready(&self) {
        self.health.set_ready(self.joined && self.brain_ready);
    }

    fn update_peer_gauges(&self) {
        for state in PeerState::ALL {
            let n = self.peers.values().filter(|p| p.state == state).count();
            self.metrics
                .peer_connections
                .get_or_create(&StateLabel { state: state.as_str() })
                .set(n as i64);
        }
        self.metrics.participants.set(self.present.len() as i64);
    }

    fn current_status(&self) -> AiStatus {
        if !self.brain_ready {
            AiStatus::Starting
        } else if self.speaking {
            AiStatus::Speaking
        } else {
            self.brain_status
        }
    }

    fn send_status(&mut self, status: AiStatus) {
        self.sent_status = Some(status);
        self.signaling.send(ClientMessage::AiStatus {
            status,
            session_id: Some(self.config.session.clone()).filter(|s| !s.is_empty()),
        });
    }

    /// Sends `ai_status` when it changed (and the orb is in the room to say it). The first
    /// status after each join is `ready`, so the room learns the orb can hear it.
    fn publish_status(&mut self) {
        if !(self.joined && self.brain_ready) {
            return;
        }
        if self.sent_status.is_none() {
            self.send_status(AiStatus::Ready);
        }
        let status = self.current_status();
        if self.sent_status != Some(status) {
            self.send_status(status);
        }
    }

    fn participant_ids(&self) -> Vec<&str> {
        self.present.keys().map(|k| &**k).collect()
    }

    async fn on_signaling(&mut self, event: SignalingEvent) -> Option<Ending> {
        match event {
            SignalingEvent::Connected => {
                self.metrics.room_connected.set(1);
            }
            SignalingEvent::Disconnected(reason) => {
                if self.joined {
                    warn!(%reason, "lost signaling; media keeps flowing while reconnecting");
                }
                self.joined = false;
                self.sent_status = None;
                self.metrics.room_connected.set(0);
                self.metrics.room_reconnects.inc();
                self.update_ready();
            }
            SignalingEvent::Fatal(e) => return Some(Ending::Error(e.to_string())),
            SignalingEvent::Message(msg) => self.on_message(msg).await,
        }
        None
    }

    async fn on_message(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::PeerDiscovery { peers } => {
                // The join was accepted; this list is the room as it is now, also after a reconnect.
                self.present.clear();
                for p in peers.iter().filter(|p| p.participant_type == ParticipantType::Human) {
                    self.present.insert(p.user_id.as_str().into(), p.user_role);
                    self.record.participants.insert(p.user_id.clone(), p.user_role);
                }
                let gone: Vec<Arc<str>> = self
                    .peers
                    .keys()
                    .filter(|u| !self.present.contains_key(*u))
                    .cloned()
                    .collect();
                for user in gone {
                    self.close_peer(&user).await;
                }
                self.joined = true;
                self.update_ready();
                self.update_peer_gauges();
                info!(participants = self.present.len(), "in the room");
                let participants = self.participant_ids();
                let ready = json!({
                    "roomId": self.config.room,
                    "sessionId": self.config.session,
                    "webrtcStatus": if self.peers.is_empty() { "waiting" } else { "connected" },
                    "participants": participants,
                });
                self.signaling.send(ClientMessage::OrbReady(ready));
                self.sent_status = None;
                self.publish_status();
            }
            ServerMessage::UserJoined {
                user_id,
                user_role,
                participant_type,
                ..
            } => {
                if participant_type == ParticipantType::Human {
                    self.deadlines.activity(Instant::now());
                    self.present.insert(user_id.as_str().into(), user_role);
                    self.record.participants.insert(user_id, user_role);
                    self.update_peer_gauges();
                }
            }
            ServerMessage::UserLeft { user_id, .. } => {
                self.deadlines.activity(Instant::now());
                let user: Arc<str> = user_id.as_str().into();
                self.present.remove(&user);
                self.close_peer(&user).await;
                let _ = self.brain_tx.try_send(BrainInput::Left { speaker: user });
                self.update_peer_gauges();
            }
            ServerMessage::Offer(relay) => self.on_offer(relay).await,
            ServerMessage::IceCandidate(relay) => self.on_candidate(relay).await,
            ServerMessage::Answer(relay) => {
                debug!(from = ?relay.from_id, "ignoring an answer: the orb never offers");
            }
            ServerMessage::Error { code, message } => {
                warn!(?code, %message, "signaling reported an error");
                if code == ErrorCode::Unauthorized {
                    self.metrics.peer_error(PeerErrorKind::Unauthorized);
                }
            }
            ServerMessage::IceServers(list) => {
                let servers: Vec<IceServer> = list
                    .ice_servers
                    .into_iter()
                    .map(|s| IceServer {
                        urls: s.urls,
                        username: s.username.unwrap_or_default(),
                        credential: s.credential.unwrap_or_default(),
                    })
                    .collect();
                let urls: Vec<&str> = servers.iter().flat_map(|s| s.urls.iter().map(String::as_str)).collect();
                info!(?urls, ttl = list.ttl, "ICE servers from signaling");
                self.media.set_signaled_ice_servers(servers);
            }
            ServerMessage::SessionCheckpoint(checkpoint) => {
                // Only an orb that has sent none yet continues one: after that, the room's
                // checkpoint is this orb's own (handed back on a reconnect).
                if self.checkpointed.is_none() {
                    let restored = crate::checkpoint::restore(&mut self.record, &checkpoint);
                    info!(
                        lines = restored.len(),
                        "continuing the session of the orb before this one"
                    );
                    // The summary is written over the whole session, the earlier orb's part too.
                    for line in restored {
                        self.rolling.add(line);
                    }
                    self.send_checkpoint();
                }
            }
            ServerMessage::Pong
            | ServerMessage::AiStatus { .. }
            | ServerMessage::SessionSummary(_)
            | ServerMessage::SessionSummaryAck { .. }
            | ServerMessage::OrbError(_) => {}
        }
    }

    /// Tells signaling (and through it the peer) that this peer's input was refused; the peer's
    /// connection is dropped, everyone else carries on.
    fn peer_error(&self, user: &str, kind: PeerErrorKind, error: &str) {
        self.metrics.peer_error(kind);
        let kind = kind.as_str();
        warn!(peer = user, kind, error, "refused input from a peer");
        self.signaling.send(ClientMessage::OrbError(json!({
            "roomId": self.config.room,
            "toId": user,
            "peerId": user,
            "code": kind,
            "error": error,
        })));
    }

    async fn close_peer(&mut self, user: &Arc<str>) {
        if let Some(entry) = self.peers.remove(user) {
            let _ = self
                .pacer_tx
                .send(PacerCmd::RemoveSink { key: entry.key.clone() })
                .await;
            entry.peer.close().await;
            info!(peer = %user, "closed peer connection");
            self.update_peer_gauges();
        }
    }

    async fn on_offer(&mut self, relay: Relay) {
        let Some(from) = relay.from_id.clone() else {
            warn!("offer without fromId");
            return;
        };
        let user: Arc<str> = from.as_str().into();
        let Some(offer) = relay.offer else {
            self.peer_error(&from, PeerErrorKind::InvalidOffer, "offer message without an offer");
            return;
        };
        let offer = self.filter_offer(&from, offer);
        // A new offer from the same human replaces the old connection (a browser reload or an
        // ICE restart done as a fresh connection).
        self.close_peer(&user).await;
        self.generation += 1;
        let key = PeerKey {
            user: user.clone(),
            generation: self.generation,
        };
        let offered_at = Instant::now();
        let peer = match self.media.create_peer(key.clone(), self.peer_tx.clone()).await {
            Ok(p) => p,
            Err(e) => {
                self.peer_error(&from, PeerErrorKind::PeerSetup, &e.to_string());
                return;
            }
        };
        match peer.answer(&offer).await {
            Ok(answer) => {
                self.signaling.send(ClientMessage::Answer(Relay {
                    to_id: Some(from.clone()),
                    answer: Some(answer),
                    ..Relay::default()
                }));
                self.peers.insert(
                    user,
                    PeerEntry {
                        key,
                        peer,
                        state: PeerState::New,
                        offered_at,
                        connected: false,
                        voice: VoiceActivity::new(VadConfig::default()),
                    },
                );
                info!(peer = %from, "answered offer");
            }
            Err(e) => {
                peer.close().await;
                self.peer_error(&from, PeerErrorKind::InvalidOffer, &e.to_string());
            }
        }
        self.update_peer_gauges();
    }

    async fn on_candidate(&mut self, relay: Relay) {
        let Some(from) = relay.from_id.as_deref() else { return };
        let Some(entry) = self.peers.get(from) else {
            debug!(peer = from, "candidate for no connection");
            return;
        };
        let candidate = relay.candidate.unwrap_or(Value::Null);
        if let Verdict::Drop { reason, detail } = candidates::check(&candidate, &self.config.rtc.denied_candidates) {
            self.candidate_dropped(from, reason, &detail);
            return;
        }
        if let Err(e) = entry.peer.add_remote_candidate(&candidate).await {
            // A bad candidate costs that candidate only; the connection may still succeed.
            self.peer_error(from, PeerErrorKind::InvalidCandidate, &e.to_string());
        }
    }

    /// A remote candidate the deny list refused: counted and logged; a malformed one is also an
    /// error for that peer, as the stack would have made it.
    fn candidate_dropped(&self, from: &str, reason: DropReason, detail: &str) {
        self.metrics.candidate_dropped(reason);
        debug!(
            peer = from,
            reason = reason.as_str(),
            detail,
            "dropped a remote ICE candidate"
        );
        if reason == DropReason::Malformed {
            self.peer_error(from, PeerErrorKind::InvalidCandidate, detail);
        }
    }

    /// The offer with the candidates of its SDP that the deny list refuses taken out.
    fn filter_offer(&self, from: &str, mut offer: Value) -> Value {
        let denied = &self.config.rtc.denied_candidates;
        if let Some(sdp) = offer.get("sdp").and_then(Value::as_str) {
            let (kept, dropped) = candidates::filter_sdp(sdp, denied);
            if !dropped.is_empty() {
                for (reason, detail) in &dropped {
                    self.metrics.candidate_dropped(*reason);
                    debug!(peer = from, reason = reason.as_str(), detail = %detail, "dropped a candidate of an offer");
                }
                offer["sdp"] = Value::String(kept);
            }
        }
        offer
    }

    async fn on_peer_event(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::LocalCandidate { key, candidate } => {
                if self.peers.get(&key.user).is_some_and(|e| e.key == key) {
                    self.signaling.send(ClientMessage::IceCandidate(Relay {
                        to_id: Some(key.user.to_string()),
                        candidate: Some(candidate),
                        ..Relay::default()
                    }));
                }
            }
            PeerEvent::State { key, state } => {
                let Some(entry) = self.peers.get_mut(&key.user).filter(|e| e.key == key) else {
                    return;
                };
                entry.state = state;
                info!(peer = %key.user, state = state.as_str(), "peer connection state");
                if state == PeerState::Connected && !entry.connected {
                    entry.connected = true;
                    // Audio starts once DTLS is up; earlier packets could only be dropped.
                    let sink = entry.peer.audio_sink();
                    let _ = self.pacer_tx.send(PacerCmd::AddSink { key: key.clone(), sink }).await;
                    let entry = self.peers.get(&key.user).expect("present");
                    self.metrics
                        .ice_connect_seconds
                        .observe(entry.offered_at.elapsed().as_secs_f64());
                    match entry.peer.media_path().await {
                        Some(path) => {
                            info!(peer = %key.user, path = path.as_str(), "media path");
                            self.metrics
                                .peer_media_paths
                                .get_or_create(&PathLabel { path: path.as_str() })
                                .inc();
                        }
                        None => warn!(peer = %key.user, "connected without a selected candidate pair"),
                    }
                    let role = self.role_of(&key.user);
                    let _ = self.brain_tx.try_send(BrainInput::Connected {
                        speaker: key.user.clone(),
                        role,
                    });
                }
                if state == PeerState::Failed {
                    let entry = self.peers.get(&key.user).expect("present");
                    let stage = if entry.connected {
                        ConnectFailure::Lost
                    } else if entry.peer.ice_connected() {
                        ConnectFailure::Dtls
                    } else {
                        ConnectFailure::Ice
                    };
                    warn!(peer = %key.user, stage = stage.as_str(), "peer connection failed");
                    self.metrics
                        .peer_connect_failures
                        .get_or_create(&StageLabel { stage: stage.as_str() })
                        .inc();
                }
                if matches!(state, PeerState::Failed | PeerState::Closed) {
                    self.close_peer(&key.user).await;
                }
                self.update_peer_gauges();
            }
            PeerEvent::Audio { key, pcm, at } => {
                let voiced = self
                    .peers
                    .get_mut(&key.user)
                    .is_some_and(|entry| entry.voice.push(&pcm));
                if voiced {
                    self.voice(at);
                }
                let role = self.role_of(&key.user);
                let frame = HeardFrame {
                    speaker: key.user,
                    role,
                    pcm,
                    at,
                };
                if self.brain_tx.try_send(BrainInput::Audio(frame)).is_err() {
                    self.metrics.audio_frames_dropped.inc();
                }
            }
        }
    }

    async fn on_brain_event(&mut self, event: BrainEvent) {
        match event {
            BrainEvent::Ready => {
                self.brain_ready = true;
                self.update_ready();
                self.publish_status();
            }
            BrainEvent::NotReady => {
                self.brain_ready = false;
                self.update_ready();
            }
            BrainEvent::Status(status) => {
                self.brain_status = status;
                self.publish_status();
            }
            BrainEvent::Audio { lane, pcm, origin } => {
                let _ = self.pacer_tx.send(PacerCmd::Audio { lane, pcm, origin }).await;
            }
            BrainEvent::Interrupt { lane } => {
                let _ = self.pacer_tx.send(PacerCmd::Interrupt { lane }).await;
            }
            BrainEvent::Transcript {
                speaker,
                text,
                overlap,
                started,
            } => {
                let (speaker, role) = match speaker {
                    Speaker::Ai => ("ai".to_owned(), UserRole::Ai),
                    Speaker::Human(Some(id)) => {
                        let role = self.role_of(&id);
                        (id.to_string(), role)
                    }
                    Speaker::Human(None) => ("human".to_owned(), UserRole::Client),
                };
                let started = started.unwrap_or_else(Instant::now);
                let line = TranscriptLine {
                    speaker,
                    role,
                    text,
                    offset_ms: self.deadlines.uptime(started).as_millis() as u64,
                    overlap,
                };
                if self.record.add_line(line.clone()) {
                    self.rolling.add(line);
                }
            }
            BrainEvent::Error(error) => {
                warn!(%error, "brain error");
                self.metrics.brain_errors.inc();
                self.signaling.send(ClientMessage::OrbError(json!({
                    "roomId": self.config.room,
                    "source": "brain",
                    "error": error,
                })));
            }
        }
    }

    /// The session's summary as `session_summary` and `session_checkpoint` carry it.
    fn summary_body(&self, uptime: Duration, reason: &str, written: Written) -> Value {
        let ids = SummaryIds {
            summary: &self.summary_id,
            room: &self.config.room,
            session: &self.config.session,
            coach: &self.config.coach,
            client: &self.config.client,
        };
        let message = session_summary(&ids, &self.record, uptime, reason, written);
        serde_json::to_value(message).expect("a summary serialises")
    }

    /// The session so far in the summary's shape, for a checkpoint: the transcript and who was
    /// there (the written content comes with the final summary).
    fn summary_so_far(&self, reason: &str) -> Value {
        let uptime = self.deadlines.uptime(Instant::now());
        self.summary_body(uptime, reason, Written::default())
    }

    fn send_checkpoint(&mut self) {
        let checkpoint = self.summary_so_far("InProgress");
        let bytes = serde_json::to_vec(&checkpoint).map_or(0, |b| b.len());
        self.signaling.send(ClientMessage::SessionCheckpoint(checkpoint));
        self.checkpointed = Some(crate::checkpoint::Extent::of(&self.record));
        self.next_checkpoint = Instant::now() + crate::checkpoint::spacing(bytes, self.checkpoint_interval);
    }

    /// A checkpoint when the session grew since the last one (a first one once it has lines).
    fn checkpoint_if_grown(&mut self) {
        let now = crate::checkpoint::Extent::of(&self.record);
        let grown = match self.checkpointed {
            Some(sent) => sent != now,
            None => !self.record.transcript.is_empty(),
        };
        if grown && self.joined && Instant::now() >= self.next_checkpoint {
            self.send_checkpoint();
        }
    }

    fn send_heartbeat(&self) {
        let usage = crate::procstat::sample();
        self.signaling.send(ClientMessage::OrbHeartbeat(json!({
            "roomId": self.config.room,
            "timestamp": crate::procstat::unix_millis(),
            "metrics": {
                "cpu": usage.cpu_percent,
                "memory": usage.rss_bytes / (1024 * 1024),
                "latency": match self.metrics.last_brain_latency_us.load(std::sync::atomic::Ordering::Relaxed) {
                    0 => Value::Null,
                    us => json!(us / 1000),
                },
                "peers": self.peers.len(),
                "connectedPeers": self.peers.values().filter(|p| p.state == PeerState::Connected).count(),
                "participants": self.present.len(),
                "uptimeSeconds": self.deadlines.uptime(Instant::now()).as_secs(),
            },
            "lastVoiceActivity": self.last_voice.map(crate::procstat::unix_millis_of),
        })));
    }

    /// Sends the summary and waits for its acknowledgement, sending it again after every
    /// reconnect (a restarted signaling server has no memory of the first copy). A refusal is
    /// final (signaling answers every copy alike), so it ends the wait at once.
    async fn deliver_summary(
        &self,
        summary: Value,
        sig_rx: &mut mpsc::UnboundedReceiver<SignalingEvent>,
        deadline: Instant,
    ) -> SummaryDelivery {
        self.signaling.send(ClientMessage::SessionSummary(summary.clone()));
        loop {
            let event = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return SummaryDelivery::Unacknowledged,
                event = sig_rx.recv() => event,
            };
            match event {
                None | Some(SignalingEvent::Fatal(_)) => return SummaryDelivery::Unacknowledged,
                Some(SignalingEvent::Message(ServerMessage::SessionSummaryAck { summary_id }))
                    if summary_id == self.summary_id =>
                {
                    return SummaryDelivery::Stored;
                }
                // The orb sends no other summary, so the refusal is of this one.
                Some(SignalingEvent::Message(ServerMessage::Error {
                    code: ErrorCode::SummaryRefused,
                    message,
                })) => return SummaryDelivery::Refused(message),
                // Back in the room after a reconnect: the copy sent before may be lost.
                Some(SignalingEvent::Message(ServerMessage::PeerDiscovery { .. })) => {
                    self.signaling.send(ClientMessage::SessionSummary(summary.clone()));
                }
                Some(_) => {}
            }
        }
    }

    /// Final status, the summary's last step written (for at most the policy's
    /// `final_timeout`), the summary to signaling (kept and re-sent across reconnects until
    /// signaling acknowledges it is stored, or `summary_ack_timeout` from the start of the
    /// goodbye passes), peers closed, signaling left, termination message.
    async fn goodbye(
        &mut self,
        ending: &Ending,
        sig_rx: &mut mpsc::UnboundedReceiver<SignalingEvent>,
        options: &SessionOptions,
    ) {
        let now = Instant::now();
        let uptime = self.deadlines.uptime(now);
        let ack_deadline = now + options.summary_ack_timeout;
        info!(reason = %ending.reason(), "ending the session");
        self.health.set_ready(false);
        self.send_status(AiStatus::Ended);
        let written = self.rolling.finish(now + options.summary.final_timeout).await;
        let summary = self.summary_body(uptime, ending.reason().as_str(), written);
        match self.deliver_summary(summary, sig_rx, ack_deadline).await {
            SummaryDelivery::Stored => info!(summary = %self.summary_id, "signaling stored the session summary"),
            SummaryDelivery::Refused(reason) => {
                self.metrics.summaries_refused.inc();
                warn!(summary = %self.summary_id, %reason, "signaling refused the session summary; giving it up");
            }
            SummaryDelivery::Unacknowledged => {
                self.metrics.summaries_unacknowledged.inc();
                warn!(summary = %self.summary_id, "signaling did not acknowledge the session summary in time");
            }
        }
        let deadline = Instant::now() + GOODBYE_TIMEOUT;
        let users: Vec<Arc<str>> = self.peers.keys().cloned().collect();
        for user in users {
            self.close_peer(&user).await;
        }
        self.signaling
            .leave(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(200)),
            )
            .await;
        let message = ending.termination_message(uptime);
        if let Err(e) = write_termination_message(&self.config.termination_log, &message) {
            warn!(path = %self.config.termination_log.display(), error = %e, "cannot write the termination message");
        }
    }
}
