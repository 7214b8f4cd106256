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
use futures::{FutureExt, SinkExt, StreamExt};
use orb_protocol::AiStatus;
use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};
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

/// The `session.update` the orb sends after connecting.
pub fn session_update(config: &OpenAiConfig) -> Value {
    json!({
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": config.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": { "type": "audio/pcm", "rate": 24000 },
                    "turn_detection": { "type": "server_vad" },
                    "transcription": { "model": "whisper-1" }
                },
                "output": {
                    "format": { "type": "audio/pcm", "rate": 24000 },
                    "voice": config.voice
                }
            }
        }
    })
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
        r = tokio_tungstenite::connect_async(req) => r,
        _ = wait_for_end(io, mixer) => return Outcome::Finished,
    };
    let mut ws = match ws {
        Ok((ws, _)) => ws,
        Err(e) => return Outcome::Lost(e.to_string()),
    };
    info!(%url, "connected to the realtime service");
    if let Err(e) = ws.send(Message::text(session_update(config).to_string())).await {
        return Outcome::Lost(e.to_string());
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
                let Ok(event) = serde_json::from_str::<Value>(&text) else {
                    warn!("unreadable realtime event");
                    continue;
                };
                if handle_event(&event, io, &mut turn, &mut ready).await.is_err() {
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
                    let append = json!({ "type": "input_audio_buffer.append", "audio": pcm16_base64(&pending) });
                    pending.clear();
                    if let Err(e) = ws.send(Message::text(append.to_string())).await {
                        return Outcome::Lost(e.to_string());
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
async fn handle_event(event: &Value, io: &BrainIo, turn: &mut Turn, ready: &mut bool) -> Result<(), ()> {
    let send = |e: BrainEvent| io.events.send(e);
    let kind = event.get("type").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "session.created" | "session.updated" => {
            if !*ready {
                *ready = true;
                send(BrainEvent::Ready).await.map_err(drop)?;
                send(BrainEvent::Status(AiStatus::Listening)).await.map_err(drop)?;
            }
        }
        "input_audio_buffer.speech_started" => {
            // The human talks over the orb: stop speaking at once.
            send(BrainEvent::Interrupt { lane: LANE }).await.map_err(drop)?;
            send(BrainEvent::Status(AiStatus::Listening)).await.map_err(drop)?;
        }
        "input_audio_buffer.speech_stopped" => {
            turn.speech_end = Some(Instant::now());
            turn.answered = false;
            send(BrainEvent::Status(AiStatus::Processing)).await.map_err(drop)?;
        }
        "response.created" => {
            turn.answered = false;
            turn.ai_text.clear();
        }
        // GA name first, then the beta name of the same event.
        "response.output_audio.delta" | "response.audio.delta" => {
            let Some(pcm) = event.get("delta").and_then(Value::as_str).and_then(base64_pcm16) else {
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
        "response.output_audio_transcript.delta" | "response.audio_transcript.delta" => {
            if let Some(d) = event.get("delta").and_then(Value::as_str) {
                turn.ai_text.push_str(d);
            }
        }
        "response.output_audio_transcript.done" | "response.audio_transcript.done" => {
            let text = event
                .get("transcript")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| std::mem::take(&mut turn.ai_text));
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
        "conversation.item.input_audio_transcription.completed" => {
            if let Some(text) = event
                .get("transcript")
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty())
            {
                let line = BrainEvent::Transcript {
                    speaker: Speaker::Human(None),
                    text: text.trim().to_owned(),
                };
                send(line).await.map_err(drop)?;
            }
        }
        "response.done" => {
            send(BrainEvent::Status(AiStatus::Listening)).await.map_err(drop)?;
            if let Some(status) = event.pointer("/response/status").and_then(Value::as_str)
                && status == "failed"
            {
                let detail = event
                    .pointer("/response/status_details")
                    .cloned()
                    .unwrap_or(Value::Null);
                send(BrainEvent::Error(format!("response failed: {detail}")))
                    .await
                    .map_err(drop)?;
            }
        }
        "error" => {
            let message = event
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error from the realtime service");
            let code = event.pointer("/error/code").and_then(Value::as_str).unwrap_or("");
            send(BrainEvent::Error(format!("realtime service error {code}: {message}")))
                .await
                .map_err(drop)?;
        }
        other => debug!(event = other, "realtime event"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(base: &str) -> OpenAiConfig {
        OpenAiConfig {
            base_url: base.into(),
            model: "gpt-realtime".into(),
            voice: "alloy".into(),
            instructions: "be brief".into(),
            api_key: "k".into(),
        }
    }

    #[test]
    fn url_and_session_update() {
        assert_eq!(
            realtime_url(&cfg("https://api.openai.com/v1/")),
            "wss://api.openai.com/v1/realtime?model=gpt-realtime"
        );
        assert_eq!(
            realtime_url(&cfg("ws://127.0.0.1:9/v1")),
            "ws://127.0.0.1:9/v1/realtime?model=gpt-realtime"
        );
        let u = session_update(&cfg("wss://x"));
        assert_eq!(u["type"], "session.update");
        assert_eq!(u["session"]["audio"]["input"]["format"]["rate"], 24000);
        assert_eq!(u["session"]["audio"]["output"]["voice"], "alloy");
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
