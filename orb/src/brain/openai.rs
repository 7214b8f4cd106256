//! A speech-to-speech brain on the OpenAI Realtime WebSocket protocol: the humans' audio is
//! mixed, resampled to 24 kHz PCM16 and streamed with `input_audio_buffer.append`; the
//! service's voice activity detection decides turns; response audio is played into the call and
//! both sides' transcripts are kept. A dropped connection or an `error` event is reported and
//! retried with backoff; the orb stays in the call meanwhile.

use std::collections::HashMap;
use std::sync::Arc;

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

use super::{Brain, BrainError, BrainEvent, BrainInput, BrainIo, Speaker};
use crate::audio::{FRAME_DURATION, FRAME_SAMPLES, downsample_2x, upsample_2x};
use crate::config::OpenAiConfig;
use crate::signaling::Backoff;

/// The lane response audio plays on.
const LANE: u32 = 0;
/// Input is sent in 100 ms appends: fewer messages, still well inside VAD resolution.
const APPEND_FRAMES: usize = 5;
/// A human's queued input beyond this (1 s) is dropped: the service wants live audio.
const MAX_INPUT_SAMPLES: usize = 48_000;

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
    #[serde(rename = "input_audio_buffer.speech_started")]
    SpeechStarted,
    #[serde(rename = "input_audio_buffer.speech_stopped")]
    SpeechStopped,
    #[serde(rename = "response.created")]
    ResponseCreated,
    // The GA names, with the beta names of the same events as aliases.
    #[serde(rename = "response.output_audio.delta", alias = "response.audio.delta")]
    AudioDelta { delta: String },
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
    InputTranscriptionCompleted { transcript: String },
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

/// The `session.update` the orb sends after connecting.
fn session_update(config: &OpenAiConfig) -> ClientEvent<'_> {
    let format = || AudioFormat::Pcm { rate: 24_000 };
    ClientEvent::SessionUpdate {
        session: Session {
            kind: SessionType::Realtime,
            instructions: &config.instructions,
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
    queues: HashMap<Arc<str>, std::collections::VecDeque<i16>>,
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
    fn frame(&mut self) -> Option<Vec<i16>> {
        let mut mix = vec![0i32; FRAME_SAMPLES];
        let mut any = false;
        for q in self.queues.values_mut() {
            let n = q.len().min(FRAME_SAMPLES);
            any |= n > 0;
            for (m, s) in mix.iter_mut().zip(q.drain(..n)) {
                *m += i32::from(s);
            }
        }
        any.then(|| mix.into_iter().map(|m| m.clamp(-32768, 32767) as i16).collect())
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
}

enum Outcome {
    /// The orb is ending.
    Finished,
    /// The connection broke; reconnect.
    Lost(String),
}

async fn run(config: OpenAiConfig, mut backoff: Backoff, mut io: BrainIo) -> Result<(), BrainError> {
    let mut mixer = InputMixer::default();
    loop {
        match connect_and_serve(&config, &mut io, &mut mixer, &mut backoff).await {
            Outcome::Finished => return Ok(()),
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
                    Some(_) => {}
                },
            }
        }
    }
}

async fn connect_and_serve(
    config: &OpenAiConfig,
    io: &mut BrainIo,
    mixer: &mut InputMixer,
    backoff: &mut Backoff,
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
        _ = wait_for_end(io, mixer) => return Outcome::Finished,
    };
    let mut ws = match ws {
        Ok((ws, _)) => ws,
        Err(e) => return Outcome::Lost(e.to_string()),
    };
    info!(%url, "connected to the realtime service");
    if let Err(e) = send_event(&mut ws, &session_update(config)).await {
        return Outcome::Lost(e);
    }
    let mut turn = Turn::default();
    let mut ready = false;
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
                if handle_event(event, io, &mut turn, &mut ready).await.is_err() {
                    return Outcome::Finished;
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
            },
            _ = frames.tick() => {
                if let Some(frame) = mixer.frame() {
                    pending.extend(downsample_2x(&frame));
                }
                if pending.len() >= FRAME_SAMPLES / 2 * APPEND_FRAMES {
                    let append = ClientEvent::InputAudioBufferAppend { audio: pcm16_base64(&pending) };
                    pending.clear();
                    if let Err(e) = send_event(&mut ws, &append).await {
                        return Outcome::Lost(e);
                    }
                }
            }
        }
    }
}

/// Resolves when the orb closes the brain's input; drops other input meanwhile.
async fn wait_for_end(io: &mut BrainIo, mixer: &mut InputMixer) {
    loop {
        match io.input.recv().await {
            None => return,
            Some(BrainInput::Left { speaker }) => mixer.remove(&speaker),
            Some(_) => {}
        }
    }
}

/// Handles one server event; `Err` when the orb side is gone.
async fn handle_event(event: ServerEvent, io: &BrainIo, turn: &mut Turn, ready: &mut bool) -> Result<(), ()> {
    let send = |e: BrainEvent| io.events.send(e);
    match event {
        ServerEvent::SessionCreated | ServerEvent::SessionUpdated => {
            if !*ready {
                *ready = true;
                send(BrainEvent::Ready).await.map_err(drop)?;
                send(BrainEvent::Status(AiStatus::Listening)).await.map_err(drop)?;
            }
        }
        ServerEvent::SpeechStarted => {
            // The human talks over the orb: stop speaking at once.
            send(BrainEvent::Interrupt { lane: LANE }).await.map_err(drop)?;
            send(BrainEvent::Status(AiStatus::Listening)).await.map_err(drop)?;
        }
        ServerEvent::SpeechStopped => {
            turn.speech_end = Some(Instant::now());
            turn.answered = false;
            send(BrainEvent::Status(AiStatus::Processing)).await.map_err(drop)?;
        }
        ServerEvent::ResponseCreated => {
            turn.answered = false;
            turn.ai_text.clear();
        }
        ServerEvent::AudioDelta { delta } => {
            let Some(pcm) = base64_pcm16(&delta) else {
                return Ok(());
            };
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
                send(BrainEvent::Transcript {
                    speaker: Speaker::Ai,
                    text,
                })
                .await
                .map_err(drop)?;
            }
        }
        ServerEvent::InputTranscriptionCompleted { transcript } => {
            let text = transcript.trim();
            if !text.is_empty() {
                let line = BrainEvent::Transcript {
                    speaker: Speaker::Human(None),
                    text: text.to_owned(),
                };
                send(line).await.map_err(drop)?;
            }
        }
        ServerEvent::ResponseDone { response } => {
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
        let sent = serde_json::to_value(session_update(&cfg("wss://x"))).unwrap();
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
            E::SpeechStarted
        );
        assert_eq!(
            parse(json!({ "type": "input_audio_buffer.speech_stopped", "audio_end_ms": 200, "item_id": "i1" })),
            E::SpeechStopped
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
                    delta: "AQD//w==".into()
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
        assert_eq!((f[0], f[500]), (150, 100));
        assert!(m.frame().is_none());
    }
}
