//! A speech-to-speech brain on the OpenAI Realtime WebSocket protocol: the humans' audio is
//! mixed, resampled to 24 kHz PCM16 and streamed with `input_audio_buffer.append`; the
//! service's voice activity detection decides turns; response audio is played into the call and
//! both sides' transcripts are kept. The service hears one mixed stream, so each human line is
//! given to the human whose own track was voiced during it (see [`super::attribution`]): the
//! brain keeps every track's voiced frames on the stream's clock, which is the clock of the
//! service's `audio_start_ms`/`audio_end_ms`. A dropped connection or an `error` event is
//! reported and retried with backoff; the orb stays in the call meanwhile. Session summaries are
//! written by the same service's text API ([`super::openai_summary`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::future::BoxFuture;
use futures::{FutureExt, Sink, SinkExt, StreamExt};
use orb_protocol::AiStatus;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue};
use tracing::{debug, info, warn};

use super::attribution::{Attributed, Interval, VoiceTimeline};
use super::openai_summary::ChatSummarizer;
use super::{
    Brain, BrainError, BrainEvent, BrainInput, BrainIo, SessionContext, Speaker, Summarizer, session_instructions,
};
use crate::audio::{FRAME_DURATION, FRAME_SAMPLES, VOICE_THRESHOLD, downsample_2x, rms, upsample_2x};
use crate::config::OpenAiConfig;
use crate::signaling::Backoff;

/// The lane response audio plays on.
const LANE: u32 = 0;
/// Input is sent in 100 ms appends: fewer messages, still well inside VAD resolution.
const APPEND_FRAMES: usize = 5;
/// A human's queued input beyond this (1 s) is dropped: the service wants live audio.
const MAX_INPUT_SAMPLES: usize = 48_000;
/// Utterances the service started but has not transcribed yet that the brain keeps track of.
const MAX_OPEN_UTTERANCES: usize = 64;
/// A session due for renewal waits at most this long for a quiet moment (nobody speaking, the
/// orb silent, every utterance transcribed) before it is renewed anyway.
const RENEW_PATIENCE: Duration = Duration::from_secs(120);
/// Transcript lines carried into a new session, at most, and their characters.
const MEMORY_LINES: usize = 40;
const MEMORY_CHARS: usize = 8_000;

pub struct OpenAiBrain {
    config: OpenAiConfig,
    backoff: Backoff,
}

impl OpenAiBrain {
    pub fn new(config: OpenAiConfig) -> Self {
        Self {
            config,
            backoff: Backoff::default(),
        }
    }

    /// Overrides reconnect timing (tests use short delays).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
}

impl Brain for OpenAiBrain {
    fn name(&self) -> &'static str {
        "openai-realtime"
    }

    fn summarizer(&self) -> Arc<dyn Summarizer> {
        Arc::new(ChatSummarizer::new(&self.config))
    }

    fn run(self: Box<Self>, io: BrainIo) -> BoxFuture<'static, Result<(), BrainError>> {
        run(self.config, self.backoff, io).boxed()
    }
}

/// `{base}/realtime?model=…`, with http(s) turned into ws(s).
pub fn realtime_url(config: &OpenAiConfig) -> String {
    let base = config.base_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/realtime?model={}", config.model)
}

/// The client events the orb sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
enum ClientEvent<'a> {
    #[serde(rename = "session.update")]
    SessionUpdate { session: Session<'a> },
    /// Base64 of 24 kHz mono PCM16.
    #[serde(rename = "input_audio_buffer.append")]
    InputAudioBufferAppend { audio: String },
    /// Barge-in: the model's record of its reply keeps only what the humans heard.
    #[serde(rename = "conversation.item.truncate")]
    ConversationItemTruncate {
        item_id: String,
        content_index: u32,
        audio_end_ms: u64,
    },
    /// Barge-in: the reply still being generated is not wanted any more.
    #[serde(rename = "response.cancel")]
    ResponseCancel,
    /// The conversation so far, given to a new session (renewal or reconnect).
    #[serde(rename = "conversation.item.create")]
    ConversationItemCreate { item: ConversationItem },
}

/// A system message of the conversation: text only.
#[derive(Debug, Serialize)]
struct ConversationItem {
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    content: [InputText; 1],
}

#[derive(Debug, Serialize)]
struct InputText {
    #[serde(rename = "type")]
    kind: &'static str,
    text: String,
}

/// The recent transcript, carried from one realtime session to the next so a renewed or
/// reconnected session does not start with no memory of the call.
#[derive(Debug, Default)]
struct Memory {
    lines: VecDeque<String>,
}

impl Memory {
    fn heard(&mut self, speaker: &Speaker, text: &str) {
        let who = match speaker {
            Speaker::Ai => "you (the AI)",
            Speaker::Human(Some(id)) => id,
            Speaker::Human(None) => "a participant",
        };
        self.lines.push_back(format!("{who}: {}", text.trim()));
        while self.lines.len() > MEMORY_LINES || self.chars() > MEMORY_CHARS {
            self.lines.pop_front();
        }
    }

    fn chars(&self) -> usize {
        self.lines.iter().map(|l| l.len() + 1).sum()
    }

    /// The message that gives a new session the call so far; `None` before anyone spoke.
    fn carry_over(&self) -> Option<ClientEvent<'static>> {
        if self.lines.is_empty() {
            return None;
        }
        let text = format!(
            "The call so far (continued from an earlier session of this call; the most recent last):\n{}",
            self.lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
        );
        Some(ClientEvent::ConversationItemCreate {
            item: ConversationItem {
                kind: "message",
                role: "system",
                content: [InputText {
                    kind: "input_text",
                    text,
                }],
            },
        })
    }
}

#[derive(Debug, Serialize)]
struct Session<'a> {
    #[serde(rename = "type")]
    kind: SessionType,
    instructions: &'a str,
    output_modalities: &'static [Modality],
    audio: SessionAudio<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum SessionType {
    Realtime,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Modality {
    Audio,
}

#[derive(Debug, Serialize)]
struct SessionAudio<'a> {
    input: AudioInput,
    output: AudioOutput<'a>,
}

#[derive(Debug, Serialize)]
struct AudioInput {
    format: AudioFormat,
    turn_detection: TurnDetection,
    transcription: Transcription,
}

#[derive(Debug, Serialize)]
struct AudioOutput<'a> {
    format: AudioFormat,
    voice: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type")]
enum AudioFormat {
    #[serde(rename = "audio/pcm")]
    Pcm { rate: u32 },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TurnDetection {
    ServerVad,
}

#[derive(Debug, Serialize)]
struct Transcription {
    model: &'static str,
}

/// The server events the orb acts on. Missing fields it can do without are optional, as
/// before; every other event type parses to `Other` and is ignored.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "type")]
enum ServerEvent {
    #[serde(rename = "session.created")]
    SessionCreated,
    #[serde(rename = "session.updated")]
    SessionUpdated,
    /// `audio_start_ms`/`audio_end_ms` count the audio appended since the session began.
    #[serde(rename = "input_audio_buffer.speech_started")]
    SpeechStarted {
        #[serde(default)]
        audio_start_ms: Option<u64>,
        #[serde(default)]
        item_id: Option<String>,
    },
    #[serde(rename = "input_audio_buffer.speech_stopped")]
    SpeechStopped {
        #[serde(default)]
        audio_end_ms: Option<u64>,
        #[serde(default)]
        item_id: Option<String>,
    },
    #[serde(rename = "response.created")]
    ResponseCreated,
    // The GA names, with the beta names of the same events as aliases.
    #[serde(rename = "response.output_audio.delta", alias = "response.audio.delta")]
    AudioDelta {
        delta: String,
        /// The assistant item the audio belongs to: what a barge-in truncates.
        #[serde(default)]
        item_id: Option<String>,
        #[serde(default)]
        content_index: u32,
    },
    #[serde(
        rename = "response.output_audio_transcript.delta",
        alias = "response.audio_transcript.delta"
    )]
    AudioTranscriptDelta { delta: String },
    #[serde(
        rename = "response.output_audio_transcript.done",
        alias = "response.audio_transcript.done"
    )]
    AudioTranscriptDone { transcript: Option<String> },
    #[serde(rename = "conversation.item.input_audio_transcription.completed")]
    InputTranscriptionCompleted {
        #[serde(default)]
        item_id: Option<String>,
        transcript: String,
    },
    #[serde(rename = "response.done")]
    ResponseDone {
        #[serde(default)]
        response: ResponseSummary,
    },
    #[serde(rename = "error")]
    Error {
        #[serde(default)]
        error: ErrorDetail,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
struct ResponseSummary {
    status: Option<ResponseStatus>,
    /// Reported verbatim on failure: its shape varies with the reason.
    #[serde(default)]
    status_details: Value,
}

/// Only a failure needs reporting; the other statuses are all `Other`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ResponseStatus {
    Failed,
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
struct ErrorDetail {
    code: Option<String>,
    message: Option<String>,
}

/// The service's answer to a `response.cancel` that arrived after the reply ended.
const CANCEL_NOT_ACTIVE: &str = "response_cancel_not_active";

/// The `session.update` the orb sends after connecting, and again when it learns its session's
/// context: the configured instructions with the context (see [`session_instructions`]).
fn session_update<'a>(config: &'a OpenAiConfig, instructions: &'a str) -> ClientEvent<'a> {
    let format = || AudioFormat::Pcm { rate: 24_000 };
    ClientEvent::SessionUpdate {
        session: Session {
            kind: SessionType::Realtime,
            instructions,
            output_modalities: &[Modality::Audio],
            audio: SessionAudio {
                input: AudioInput {
                    format: format(),
                    turn_detection: TurnDetection::ServerVad,
                    transcription: Transcription { model: "whisper-1" },
                },
                output: AudioOutput {
                    format: format(),
                    voice: &config.voice,
                },
            },
        },
    }
}

/// Sends one client event; `Err` is why the connection is unusable.
async fn send_event<S>(ws: &mut S, event: &ClientEvent<'_>) -> Result<(), String>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let text = serde_json::to_string(event).map_err(|e| e.to_string())?;
    ws.send(Message::text(text)).await.map_err(|e| e.to_string())
}

/// Mixes the humans' frames into one 48 kHz stream, 20 ms at a time.
#[derive(Default)]
struct InputMixer {
    queues: HashMap<Arc<str>, VecDeque<i16>>,
}

/// One mixed frame, and whose voice is in it.
struct Mixed {
    pcm: Vec<i16>,
    voiced: Vec<Arc<str>>,
}

impl InputMixer {
    fn push(&mut self, speaker: Arc<str>, pcm: &[i16]) {
        let q = self.queues.entry(speaker).or_default();
        q.extend(pcm);
        let excess = q.len().saturating_sub(MAX_INPUT_SAMPLES);
        q.drain(..excess);
    }

    fn remove(&mut self, speaker: &str) {
        self.queues.remove(speaker);
    }

    /// The next mixed frame, or `None` when nobody sent audio.
    fn frame(&mut self) -> Option<Mixed> {
        let mut mix = vec![0i32; FRAME_SAMPLES];
        let mut any = false;
        let mut voiced = Vec::new();
        for (speaker, q) in &mut self.queues {
            let n = q.len().min(FRAME_SAMPLES);
            any |= n > 0;
            let part: Vec<i16> = q.drain(..n).collect();
            // The same test as the orb's activity: this track is voiced in this frame.
            if n > 0 && rms(&part) >= VOICE_THRESHOLD {
                voiced.push(speaker.clone());
            }
            for (m, s) in mix.iter_mut().zip(part) {
                *m += i32::from(s);
            }
        }
        any.then(|| Mixed {
            pcm: mix.into_iter().map(|m| m.clamp(-32768, 32767) as i16).collect(),
            voiced,
        })
    }
}

/// The input stream of one connection: how much audio went to the service, each human's voiced
/// stretches of it, and the utterances the service found in it.
#[derive(Default)]
struct InputStream {
    /// Samples at 24 kHz appended (or queued to append) since the connection's session began.
    samples: u64,
    timeline: VoiceTimeline,
    /// Utterances not transcribed yet: item id, start and end on the stream's clock.
    open: VecDeque<(String, Option<u64>, Option<u64>)>,
}

impl InputStream {
    fn position_ms(&self) -> u64 {
        self.samples / 24
    }

    /// A mixed frame goes to the service: its voiced tracks are noted at its place in the stream.
    fn push(&mut self, mixed: &Mixed, samples_24k: usize, now: Instant) {
        let start_ms = self.position_ms();
        self.samples += samples_24k as u64;
        let len_ms = self.position_ms() - start_ms;
        for speaker in &mixed.voiced {
            self.timeline.voiced(speaker, start_ms, len_ms, now);
        }
    }

    fn utterance(&mut self, item_id: Option<String>) -> Option<&mut (String, Option<u64>, Option<u64>)> {
        let id = item_id?;
        if let Some(i) = self.open.iter().position(|(open, _, _)| *open == id) {
            return self.open.get_mut(i);
        }
        if self.open.len() >= MAX_OPEN_UTTERANCES {
            self.open.pop_front();
        }
        self.open.push_back((id, None, None));
        self.open.back_mut()
    }

    fn speech_started(&mut self, item_id: Option<String>, start_ms: Option<u64>) {
        if let Some(u) = self.utterance(item_id) {
            u.1 = start_ms;
        }
    }

    fn speech_stopped(&mut self, item_id: Option<String>, end_ms: Option<u64>) {
        if let Some(u) = self.utterance(item_id) {
            u.2 = end_ms;
        }
    }

    /// Who said the utterance `item_id`, now transcribed (and forgotten). Without an end yet,
    /// it runs to the end of the audio sent so far.
    fn transcribed(&mut self, item_id: Option<&str>) -> Option<Attributed> {
        let i = self.open.iter().position(|(id, _, _)| Some(id.as_str()) == item_id)?;
        let (_, start, end) = self.open.remove(i)?;
        let end = end.unwrap_or_else(|| self.position_ms());
        self.timeline.attribute(Interval::new(start?, end))
    }
}

fn pcm16_base64(samples: &[i16]) -> String {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    B64.encode(bytes)
}

fn base64_pcm16(data: &str) -> Option<Vec<i16>> {
    let bytes = B64.decode(data).ok()?;
    Some(
        bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect(),
    )
}

/// Per-connection state of a response being spoken.
#[derive(Default)]
struct Turn {
    /// When the service said the human stopped speaking.
    speech_end: Option<Instant>,
    /// Whether the current response already produced audio.
    answered: bool,
    upsample_last: i16,
    ai_text: String,
    /// Between `response.created` and `response.done`.
    responding: bool,
    /// The reply audio being played, for a barge-in to truncate.
    speaking: Option<Speaking>,
}

/// The assistant item whose audio the orb is playing.
#[derive(Debug)]
struct Speaking {
    item_id: String,
    content_index: u32,
    /// When its first audio reached the orb's playout, which plays in real time from then on.
    started: Instant,
    /// Audio of the item received so far.
    received_ms: u64,
}

impl Turn {
    /// Nobody is speaking, the orb's reply has been played, and no utterance awaits its
    /// transcript: a new session can take over without anyone hearing a gap or losing a line.
    fn is_quiet(&self, stream: &InputStream, now: Instant) -> bool {
        !self.responding
            && stream.open.is_empty()
            && self.speaking.as_ref().is_none_or(|s| s.played_ms(now) >= s.received_ms)
    }
}

impl Speaking {
    /// How much of the item the humans heard by `now`: playout runs in real time from the first
    /// frame and cannot play what has not arrived.
    fn played_ms(&self, now: Instant) -> u64 {
        let elapsed = u64::try_from(now.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX);
        elapsed.min(self.received_ms)
    }
}

/// What a human speaking over the orb asks of the service: cancel the reply in flight and cut
/// the model's record of the reply to what was heard, so the history keeps no speech nobody
/// heard.
fn barge_in(turn: &mut Turn, now: Instant) -> Vec<ClientEvent<'static>> {
    let mut events = Vec::new();
    if std::mem::take(&mut turn.responding) {
        events.push(ClientEvent::ResponseCancel);
    }
    if let Some(speaking) = turn.speaking.take() {
        events.push(ClientEvent::ConversationItemTruncate {
            audio_end_ms: speaking.played_ms(now),
            item_id: speaking.item_id,
            content_index: speaking.content_index,
        });
    }
    events
}

enum Outcome {
    /// The orb is ending.
    Finished,
    /// The session is old enough to be renewed; connect again at once.
    Renew,
    /// The connection broke; reconnect.
    Lost(String),
}

async fn run(config: OpenAiConfig, mut backoff: Backoff, mut io: BrainIo) -> Result<(), BrainError> {
    let mut mixer = InputMixer::default();
    let mut memory = Memory::default();
    let mut renewing = false;
    // Kept across reconnects: a new connection's session is told it from the start.
    let mut context = SessionContext::default();
    loop {
        match connect_and_serve(
            &config,
            &mut io,
            &mut mixer,
            &mut context,
            &mut backoff,
            &mut memory,
            renewing,
        )
        .await
        {
            Outcome::Finished => return Ok(()),
            Outcome::Renew => {
                info!("renewing the realtime session before the service's limit");
                renewing = true;
                continue;
            }
            Outcome::Lost(reason) => {
                warn!(%reason, "realtime service connection lost");
                if io
                    .events
                    .send(BrainEvent::Error(format!("realtime service: {reason}")))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                let _ = io.events.send(BrainEvent::NotReady).await;
                let _ = io.events.send(BrainEvent::Status(AiStatus::Listening)).await;
                renewing = false;
            }
        }
        // Keep draining input while waiting so the session loop never blocks on the brain.
        let wait = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                input = io.input.recv() => match input {
                    None => return Ok(()),
                    Some(BrainInput::Left { speaker }) => mixer.remove(&speaker),
                    Some(BrainInput::Context(c)) => context = c,
                    Some(_) => {}
                },
            }
        }
    }
}

/// One realtime session. `renewing`: the previous one was closed on purpose; the humans' audio
/// is kept (not dropped) while this one connects, and the orb stays ready throughout.
async fn connect_and_serve(
    config: &OpenAiConfig,
    io: &mut BrainIo,
    mixer: &mut InputMixer,
    context: &mut SessionContext,
    backoff: &mut Backoff,
    memory: &mut Memory,
    renewing: bool,
) -> Outcome {
    let url = realtime_url(config);
    let mut req = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return Outcome::Lost(format!("invalid URL {url}: {e}")),
    };
    match HeaderValue::from_str(&format!("Bearer {}", config.api_key)) {
        Ok(v) => {
            req.headers_mut().insert("authorization", v);
        }
        Err(_) => return Outcome::Lost("the API key is not a valid header value".into()),
    }
    let ws = tokio::select! {
        r = crate::proxy::connect_websocket(req, &config.proxy) => r,
        _ = wait_for_end(io, mixer, context, renewing) => return Outcome::Finished,
    };
    let mut ws = match ws {
        Ok((ws, _)) => ws,
        Err(e) => return Outcome::Lost(e.to_string()),
    };
    info!(%url, "connected to the realtime service");
    let instructions = session_instructions(&config.instructions, context);
    if let Err(e) = send_event(&mut ws, &session_update(config, &instructions)).await {
        return Outcome::Lost(e);
    }
    if let Some(carry_over) = memory.carry_over()
        && let Err(e) = send_event(&mut ws, &carry_over).await
    {
        return Outcome::Lost(e);
    }
    let session_started = Instant::now();
    let mut turn = Turn::default();
    let mut stream = InputStream::default();
    // A renewed session serves an orb that is ready already: no second `Ready`.
    let mut ready = renewing;
    let mut pending: Vec<i16> = Vec::with_capacity(FRAME_SAMPLES * APPEND_FRAMES / 2);
    let mut frames = tokio::time::interval(FRAME_DURATION);
    frames.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(frame))) => {
                        return Outcome::Lost(format!("closed by the service ({})", frame.map(|f| f.reason.to_string()).unwrap_or_default()));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Outcome::Lost(e.to_string()),
                    None => return Outcome::Lost("connection closed".into()),
                };
                let event = match serde_json::from_str::<ServerEvent>(&text) {
                    Ok(event) => event,
                    Err(error) => {
                        warn!(%error, "unreadable realtime event");
                        continue;
                    }
                };
                let mut replies = Vec::new();
                if handle_event(event, io, &mut turn, &mut stream, &mut ready, &mut replies, memory).await.is_err() {
                    return Outcome::Finished;
                }
                for reply in &replies {
                    if let Err(e) = send_event(&mut ws, reply).await {
                        return Outcome::Lost(e);
                    }
                }
                if ready {
                    backoff.reset();
                }
            }
            input = io.input.recv() => match input {
                None => {
                    let _ = ws.close(None).await;
                    return Outcome::Finished;
                }
                Some(BrainInput::Audio(frame)) => mixer.push(frame.speaker, &frame.pcm),
                Some(BrainInput::Left { speaker }) => mixer.remove(&speaker),
                Some(BrainInput::Connected { .. }) => {}
                Some(BrainInput::Context(c)) => {
                    if c != *context {
                        *context = c;
                        let instructions = session_instructions(&config.instructions, context);
                        if let Err(e) = send_event(&mut ws, &session_update(config, &instructions)).await {
                            return Outcome::Lost(e);
                        }
                    }
                }
            },
            _ = frames.tick() => {
                if let Some(mixed) = mixer.frame() {
                    let down = downsample_2x(&mixed.pcm);
                    stream.push(&mixed, down.len(), Instant::now());
                    pending.extend(down);
                }
                if pending.len() >= FRAME_SAMPLES / 2 * APPEND_FRAMES {
                    let append = ClientEvent::InputAudioBufferAppend { audio: pcm16_base64(&pending) };
                    pending.clear();
                    if let Err(e) = send_event(&mut ws, &append).await {
                        return Outcome::Lost(e);
                    }
                    // Renewal only between appends, so no audio is left behind.
                    let age = session_started.elapsed();
                    if age >= config.session_renew_after
                        && (turn.is_quiet(&stream, Instant::now()) || age >= config.session_renew_after + RENEW_PATIENCE)
                    {
                        let _ = ws.close(None).await;
                        return Outcome::Renew;
                    }
                }
            }
        }
    }
}

/// Resolves when the orb closes the brain's input; keeps the session's context. Audio meanwhile
/// is kept for the next session when `keep_audio` (a renewal: the humans are talking to a working
/// orb), else dropped.
async fn wait_for_end(io: &mut BrainIo, mixer: &mut InputMixer, context: &mut SessionContext, keep_audio: bool) {
    loop {
        match io.input.recv().await {
            None => return,
            Some(BrainInput::Left { speaker }) => mixer.remove(&speaker),
            Some(BrainInput::Audio(frame)) if keep_audio => mixer.push(frame.speaker, &frame.pcm),
            Some(BrainInput::Context(c)) => *context = c,
            Some(_) => {}
        }
    }
}

/// Handles one server event, pushing what to answer the service onto `replies`; `Err` when the
/// orb side is gone.
async fn handle_event(
    event: ServerEvent,
    io: &BrainIo,
    turn: &mut Turn,
    stream: &mut InputStream,
    ready: &mut bool,
    replies: &mut Vec<ClientEvent<'static>>,
    memory: &mut Memory,
) -> Result<(), ()> {
    let send = |e: BrainEvent| io.events.send(e);
    match event {
        ServerEvent::SessionCreated | ServerEvent::SessionUpdated => {
            if !*ready {
                *ready = true;
                send(BrainEvent::Ready).await.map_err(drop)?;
                send(BrainEvent::Status(AiStatus::Listening)).await.map_err(drop)?;
            }
        }
        ServerEvent::SpeechStarted {
            audio_start_ms,
            item_id,
        } => {
            stream.speech_started(item_id, audio_start_ms);
            // The human talks over the orb: stop speaking at once.
            replies.extend(barge_in(turn, Instant::now()));
            send(BrainEvent::Interrupt { lane: LANE }).await.map_err(drop)?;
            send(BrainEvent::Status(AiStatus::Listening)).await.map_err(drop)?;
        }
        ServerEvent::SpeechStopped { audio_end_ms, item_id } => {
            stream.speech_stopped(item_id, audio_end_ms);
            turn.speech_end = Some(Instant::now());
            turn.answered = false;
            send(BrainEvent::Status(AiStatus::Processing)).await.map_err(drop)?;
        }
        ServerEvent::ResponseCreated => {
            turn.answered = false;
            turn.responding = true;
            turn.speaking = None;
            turn.ai_text.clear();
        }
        ServerEvent::AudioDelta {
            delta,
            item_id,
            content_index,
        } => {
            let Some(pcm) = base64_pcm16(&delta) else {
                return Ok(());
            };
            if let Some(item_id) = item_id {
                let speaking = match &mut turn.speaking {
                    Some(s) if s.item_id == item_id && s.content_index == content_index => s,
                    speaking => speaking.insert(Speaking {
                        item_id,
                        content_index,
                        started: Instant::now(),
                        received_ms: 0,
                    }),
                };
                // 24 kHz: 24 samples a millisecond.
                speaking.received_ms += pcm.len() as u64 / 24;
            }
            let origin = if turn.answered { None } else { turn.speech_end.take() };
            turn.answered = true;
            let pcm = upsample_2x(&pcm, &mut turn.upsample_last);
            send(BrainEvent::Audio {
                lane: LANE,
                pcm,
                origin,
            })
            .await
            .map_err(drop)?;
        }
        ServerEvent::AudioTranscriptDelta { delta } => turn.ai_text.push_str(&delta),
        ServerEvent::AudioTranscriptDone { transcript } => {
            let text = transcript.unwrap_or_else(|| std::mem::take(&mut turn.ai_text));
            turn.ai_text.clear();
            if !text.trim().is_empty() {
                memory.heard(&Speaker::Ai, &text);
                send(BrainEvent::Transcript {
                    speaker: Speaker::Ai,
                    text,
                    overlap: false,
                    started: None,
                })
                .await
                .map_err(drop)?;
            }
        }
        ServerEvent::InputTranscriptionCompleted { item_id, transcript } => {
            let who = stream.transcribed(item_id.as_deref());
            let text = transcript.trim();
            if !text.is_empty() {
                if who.is_none() {
                    debug!(?item_id, "no human voice heard during a transcribed utterance");
                }
                let speaker = Speaker::Human(who.as_ref().map(|w| w.speaker.clone()));
                memory.heard(&speaker, text);
                let line = BrainEvent::Transcript {
                    speaker,
                    text: text.to_owned(),
                    overlap: who.as_ref().is_some_and(|w| w.overlap),
                    started: who.map(|w| w.started),
                };
                send(line).await.map_err(drop)?;
            }
        }
        ServerEvent::ResponseDone { response } => {
            // The reply's audio may still be playing: `speaking` stays for a barge-in.
            turn.responding = false;
            send(BrainEvent::Status(AiStatus::Listening)).await.map_err(drop)?;
            if response.status == Some(ResponseStatus::Failed) {
                send(BrainEvent::Error(format!(
                    "response failed: {}",
                    response.status_details
                )))
                .await
                .map_err(drop)?;
            }
        }
        ServerEvent::Error { error } => {
            let message = error
                .message
                .as_deref()
                .unwrap_or("unknown error from the realtime service");
            let code = error.code.as_deref().unwrap_or("");
            if code == CANCEL_NOT_ACTIVE {
                // The service's own turn detection cancelled the reply before the orb asked.
                debug!("no reply in flight to cancel");
                return Ok(());
            }
            send(BrainEvent::Error(format!("realtime service error {code}: {message}")))
                .await
                .map_err(drop)?;
        }
        ServerEvent::Other => debug!("realtime event not used by the orb"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cfg(base: &str) -> OpenAiConfig {
        OpenAiConfig {
            base_url: base.into(),
            model: "gpt-realtime".into(),
            voice: "alloy".into(),
            instructions: "be brief".into(),
            api_key: "k".into(),
            session_renew_after: Duration::from_secs(3000),
            summary_model: "gpt-test".into(),
            proxy: Default::default(),
        }
    }

    #[test]
    fn realtime_url_from_base_url() {
        assert_eq!(
            realtime_url(&cfg("https://api.openai.com/v1/")),
            "wss://api.openai.com/v1/realtime?model=gpt-realtime"
        );
        assert_eq!(
            realtime_url(&cfg("ws://127.0.0.1:9/v1")),
            "ws://127.0.0.1:9/v1/realtime?model=gpt-realtime"
        );
    }

    #[test]
    fn session_update_serialises_as_documented() {
        let sent = serde_json::to_value(session_update(&cfg("wss://x"), "be brief")).unwrap();
        assert_eq!(
            sent,
            json!({
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": "be brief",
                    "output_modalities": ["audio"],
                    "audio": {
                        "input": {
                            "format": { "type": "audio/pcm", "rate": 24000 },
                            "turn_detection": { "type": "server_vad" },
                            "transcription": { "model": "whisper-1" }
                        },
                        "output": {
                            "format": { "type": "audio/pcm", "rate": 24000 },
                            "voice": "alloy"
                        }
                    }
                }
            })
        );
    }

    #[test]
    fn the_session_update_carries_the_sessions_context() {
        let config = cfg("wss://x");
        let context = SessionContext {
            coach: "coach-1".into(),
            client: "client-2".into(),
            purpose: "Quarterly goals review".into(),
        };
        let instructions = session_instructions(&config.instructions, &context);
        let sent = serde_json::to_value(session_update(&config, &instructions)).unwrap();
        let sent = sent["session"]["instructions"].as_str().unwrap();
        assert!(sent.starts_with("be brief\n\n"), "{sent}");
        for fact in [
            r#""coachUserId":"coach-1""#,
            r#""clientUserId":"client-2""#,
            r#""purpose":"Quarterly goals review""#,
        ] {
            assert!(sent.contains(fact), "{fact} missing: {sent}");
        }
    }

    #[test]
    fn a_barge_in_cancels_the_reply_in_flight_and_truncates_it_to_what_was_heard() {
        let start = Instant::now();
        let mut turn = Turn {
            responding: true,
            speaking: Some(Speaking {
                item_id: "item_7".into(),
                content_index: 0,
                started: start,
                received_ms: 5_000,
            }),
            ..Turn::default()
        };
        let sent: Vec<Value> = barge_in(&mut turn, start + Duration::from_millis(1_250))
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect();
        assert_eq!(
            sent,
            [
                json!({ "type": "response.cancel" }),
                json!({ "type": "conversation.item.truncate", "item_id": "item_7", "content_index": 0, "audio_end_ms": 1250 }),
            ]
        );
        // Once is enough: a second voice onset finds nothing left to cut.
        assert!(barge_in(&mut turn, start + Duration::from_secs(2)).is_empty());
    }

    #[test]
    fn the_memory_keeps_the_most_recent_lines_within_its_bounds() {
        let mut memory = Memory::default();
        assert!(memory.carry_over().is_none(), "nothing to carry before anyone spoke");
        for i in 0..100 {
            memory.heard(&Speaker::Human(Some("coach-1".into())), &format!("line {i}"));
        }
        memory.heard(&Speaker::Ai, &"x".repeat(MEMORY_CHARS / 2));
        assert!(memory.lines.len() <= MEMORY_LINES && memory.chars() <= MEMORY_CHARS);
        let carried = serde_json::to_value(memory.carry_over().unwrap()).unwrap();
        let text = carried["item"]["content"][0]["text"].as_str().unwrap();
        assert!(
            text.contains("coach-1: line 99") && !text.contains("line 0\n"),
            "{text}"
        );
        assert!(text.ends_with(&format!("you (the AI): {}", "x".repeat(MEMORY_CHARS / 2))));
    }

    #[test]
    fn what_was_heard_never_exceeds_what_arrived() {
        let start = Instant::now();
        let speaking = Speaking {
            item_id: "item_1".into(),
            content_index: 0,
            started: start,
            received_ms: 800,
        };
        assert_eq!(speaking.played_ms(start), 0);
        assert_eq!(speaking.played_ms(start + Duration::from_millis(300)), 300);
        assert_eq!(speaking.played_ms(start + Duration::from_secs(60)), 800);
        // A reply that ended but whose audio still plays is truncated, not cancelled.
        let mut turn = Turn {
            speaking: Some(speaking),
            ..Turn::default()
        };
        let sent = barge_in(&mut turn, start + Duration::from_millis(500));
        assert_eq!(sent.len(), 1);
        assert!(matches!(
            &sent[0],
            ClientEvent::ConversationItemTruncate { audio_end_ms: 500, .. }
        ));
    }

    #[test]
    fn input_audio_buffer_append_serialises_as_documented() {
        let append = ClientEvent::InputAudioBufferAppend {
            audio: pcm16_base64(&[1, -1]),
        };
        assert_eq!(
            serde_json::to_string(&append).unwrap(),
            r#"{"type":"input_audio_buffer.append","audio":"AQD//w=="}"#
        );
    }

    fn parse(v: Value) -> ServerEvent {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn handled_server_events_deserialise() {
        use ServerEvent as E;
        let session = json!({ "id": "sess_1", "object": "realtime.session" });
        assert_eq!(
            parse(json!({ "type": "session.created", "event_id": "e1", "session": session })),
            E::SessionCreated
        );
        assert_eq!(
            parse(json!({ "type": "session.updated", "session": session })),
            E::SessionUpdated
        );
        assert_eq!(
            parse(json!({ "type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "i1" })),
            E::SpeechStarted {
                audio_start_ms: Some(0),
                item_id: Some("i1".into())
            }
        );
        assert_eq!(
            parse(json!({ "type": "input_audio_buffer.speech_stopped", "audio_end_ms": 200, "item_id": "i1" })),
            E::SpeechStopped {
                audio_end_ms: Some(200),
                item_id: Some("i1".into())
            }
        );
        // Both are optional: the brain then cannot say who spoke, and says so.
        assert_eq!(
            parse(json!({ "type": "input_audio_buffer.speech_stopped" })),
            E::SpeechStopped {
                audio_end_ms: None,
                item_id: None
            }
        );
        assert_eq!(
            parse(json!({ "type": "response.created", "response": { "id": "r1", "status": "in_progress" } })),
            E::ResponseCreated
        );
        // GA and beta names of the same events.
        for kind in ["response.output_audio.delta", "response.audio.delta"] {
            assert_eq!(
                parse(json!({
                    "type": kind, "response_id": "r1", "item_id": "i2",
                    "output_index": 0, "content_index": 0, "delta": "AQD//w=="
                })),
                E::AudioDelta {
                    delta: "AQD//w==".into(),
                    item_id: Some("i2".into()),
                    content_index: 0,
                }
            );
        }
        for kind in [
            "response.output_audio_transcript.delta",
            "response.audio_transcript.delta",
        ] {
            assert_eq!(
                parse(json!({ "type": kind, "response_id": "r1", "delta": "Hi" })),
                E::AudioTranscriptDelta { delta: "Hi".into() }
            );
        }
        for kind in [
            "response.output_audio_transcript.done",
            "response.audio_transcript.done",
        ] {
            assert_eq!(
                parse(json!({ "type": kind, "response_id": "r1", "transcript": "Hi there" })),
                E::AudioTranscriptDone {
                    transcript: Some("Hi there".into())
                }
            );
        }
        // Without a transcript the brain falls back to the deltas it collected.
        assert_eq!(
            parse(json!({ "type": "response.output_audio_transcript.done" })),
            E::AudioTranscriptDone { transcript: None }
        );
        assert_eq!(
            parse(json!({
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": "i1", "content_index": 0, "transcript": "hello orb"
            })),
            E::InputTranscriptionCompleted {
                item_id: Some("i1".into()),
                transcript: "hello orb".into()
            }
        );
        assert_eq!(
            parse(json!({
                "type": "response.done",
                "response": { "id": "r1", "status": "completed", "status_details": null }
            })),
            E::ResponseDone {
                response: ResponseSummary {
                    status: Some(ResponseStatus::Other),
                    status_details: Value::Null,
                }
            }
        );
        let details = json!({ "type": "failed", "error": { "type": "server_error", "code": "x" } });
        assert_eq!(
            parse(json!({
                "type": "response.done",
                "response": { "id": "r1", "status": "failed", "status_details": details }
            })),
            E::ResponseDone {
                response: ResponseSummary {
                    status: Some(ResponseStatus::Failed),
                    status_details: details.clone(),
                }
            }
        );
        assert_eq!(
            parse(json!({
                "type": "error", "event_id": "e9",
                "error": { "type": "invalid_request_error", "code": "bad_thing", "message": "boom", "param": null }
            })),
            E::Error {
                error: ErrorDetail {
                    code: Some("bad_thing".into()),
                    message: Some("boom".into()),
                }
            }
        );
        // The service may omit the code; the brain still reports the error.
        assert_eq!(
            parse(json!({ "type": "error", "error": { "type": "server_error", "code": null, "message": "boom" } })),
            E::Error {
                error: ErrorDetail {
                    code: None,
                    message: Some("boom".into()),
                }
            }
        );
    }

    #[test]
    fn unknown_server_events_are_ignored_not_errors() {
        for event in [
            json!({ "type": "input_audio_buffer.committed", "item_id": "i1", "previous_item_id": null }),
            json!({ "type": "rate_limits.updated", "rate_limits": [] }),
            json!({ "type": "some.future.event" }),
        ] {
            assert_eq!(parse(event), ServerEvent::Other);
        }
    }

    #[test]
    fn malformed_server_events_are_errors() {
        for text in [
            "not json",
            "{\"type\":",
            "{\"no_type\":1}",
            "{\"type\":\"response.output_audio.delta\"}",
        ] {
            assert!(serde_json::from_str::<ServerEvent>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn pcm16_base64_round_trips() {
        let x = vec![0i16, 1, -1, i16::MAX, i16::MIN];
        assert_eq!(base64_pcm16(&pcm16_base64(&x)).unwrap(), x);
    }

    #[test]
    fn input_mixer_sums_speakers_per_frame() {
        let mut m = InputMixer::default();
        assert!(m.frame().is_none());
        m.push("a".into(), &[100; 960]);
        m.push("b".into(), &[50; 480]);
        let f = m.frame().unwrap();
        assert_eq!((f.pcm[0], f.pcm[500]), (150, 100));
        assert!(f.voiced.is_empty(), "both far below the voice threshold");
        assert!(m.frame().is_none());
    }

    /// Two humans in turn on one mixed stream: the service's utterances, on the stream's clock,
    /// go to whoever's track was voiced then, also when the transcription comes much later.
    #[test]
    fn utterances_go_to_the_track_voiced_during_them() {
        let voice = crate::audio::tone(300.0, FRAME_SAMPLES, 8000, 0);
        let silence = vec![0i16; FRAME_SAMPLES];
        let (coach, client): (Arc<str>, Arc<str>) = ("coach".into(), "client".into());
        let mut m = InputMixer::default();
        let mut stream = InputStream::default();
        // 1 s coach, 0.5 s nobody, 1 s client: 20 ms frames from both tracks each tick.
        for i in 0..125 {
            let (a, b) = match i {
                0..50 => (&voice, &silence),
                50..75 => (&silence, &silence),
                _ => (&silence, &voice),
            };
            m.push(coach.clone(), a);
            m.push(client.clone(), b);
            let mixed = m.frame().unwrap();
            stream.push(&mixed, FRAME_SAMPLES / 2, Instant::now());
        }
        assert_eq!(stream.position_ms(), 2500);
        stream.speech_started(Some("i1".into()), Some(0));
        stream.speech_stopped(Some("i1".into()), Some(1300));
        stream.speech_started(Some("i2".into()), Some(1200));
        // i2 has no end yet: it runs to the end of the audio sent.
        let first = stream.transcribed(Some("i1")).unwrap();
        let second = stream.transcribed(Some("i2")).unwrap();
        assert_eq!((&first.speaker, first.overlap), (&coach, false));
        assert_eq!((&second.speaker, second.overlap), (&client, false));
        assert_eq!(stream.transcribed(Some("i1")), None, "forgotten once transcribed");
        assert_eq!(stream.transcribed(None), None);
    }
}
